"""JOB_CONCURRENCY for the runpod SDK, and `refresh_worker` while other jobs are on the worker.

With JOB_CONCURRENCY above 1 the SDK's JobScaler asks `concurrency_modifier` how many jobs the
worker may hold, and takes them through /job-take-batch; the jobs then go through the worker's
pipeline (comfy/server/pipeline.py). With 1 nothing here changes what the SDK does.

A result with `refresh_worker: true` makes the SDK post `stopPod`, and RunPod replaces the
worker. With other jobs still on it (one preparing, one delivering) they would go down with it.
So a refresh asked while other jobs are in flight is held back: the worker takes no more jobs
(the modifier answers 0) and the last of its jobs to finish carries `refresh_worker`. Should
that last job be cancelled instead (a cancelled job returns no result), the worker takes one
more job, alone, to carry it.

The SDK (runpod 1.12, rp_scale.JobScaler) starts at most `current_concurrency` handler tasks
from its queue of taken jobs. Lowering the value while a taken job still sits in that queue
would leave the job there for good (and the worker with it, waiting for its occupancy to reach
0), so the modifier lowers it only once every job the SDK holds has reached the handler.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("comfy.worker.concurrency")


def sdk_jobs_in_flight() -> set[str]:
    """Ids of the jobs the SDK holds (taken, queued or running)."""
    from runpod.serverless.modules.worker_state import JobsProgress

    return {job.id for job in list(JobsProgress())}


class SdkConcurrency:
    """What handler.py gives runpod.serverless.start, and what it does with each job and result."""

    def __init__(self, concurrency: int, in_flight: Callable[[], set[str]] = sdk_jobs_in_flight) -> None:
        self.concurrency = concurrency
        self._in_flight = in_flight
        self._lock = threading.Lock()
        self._started: set[str] = set()  # jobs the SDK holds that reached the handler
        self.draining = False  # a refresh was asked: no more jobs, the last one carries it
        self.refresh_sent = False  # ...and a result carried it

    def start_config(self) -> dict[str, Any]:
        """The SDK's `concurrency_modifier` when jobs are pipelined; nothing (the SDK's default of 1) otherwise."""
        return {"concurrency_modifier": self.modifier} if self.concurrency > 1 else {}

    def job_started(self, job_id: str) -> None:
        """The handler got the job (called first thing, on the SDK's event loop)."""
        with self._lock:
            self._started.add(job_id)

    def modifier(self, current: int) -> int:
        """How many jobs the worker may hold: JOB_CONCURRENCY; none while it waits to be replaced,
        but one when no job is left to ask for that; unchanged while a taken job has not started."""
        with self._lock:
            if not self.draining:
                return self.concurrency
            held = self._in_flight()
            self._started &= held
            if held - self._started:
                return current  # lowered now, the SDK would never start that job
            return 1 if not self.refresh_sent and not held else 0

    def settle_refresh(self, result: dict[str, Any], job_id: str) -> dict[str, Any]:
        """Hold back `refresh_worker` while other jobs are in flight; give it to the last one.
        Called on the SDK's event loop as the handler returns, so the count is the SDK's own."""
        if self.concurrency == 1:
            return result
        with self._lock:
            if result.get("refresh_worker"):
                self.draining = True
            if not self.draining:
                return result
            others = len(self._in_flight() - {job_id})
            if others > 0:
                if result.pop("refresh_worker", None):
                    log.warning("job %s asks for a new worker; %d other job(s) are still on this one: it takes no "
                                "more jobs, and the last of them asks for it", job_id, others)
            else:
                result["refresh_worker"] = True
                self.refresh_sent = True
        return result
