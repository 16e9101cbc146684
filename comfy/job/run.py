"""Run one job: inputs in, workflow checked and run, outputs back.

Blocking; the async handler runs it in a thread and signals cancellation through an
Event. Every failure comes back as a result dict with `error` (never an exception), so
the caller always gets a clear reason and the worker keeps going.

A job is admitted to the worker's pipeline (comfy/server/pipeline.py: at most JOB_CONCURRENCY
at once) and goes through three stages (comfy/job/stages.py): prepare, execute in ComfyUI's
one slot, deliver. With JOB_CONCURRENCY=1 it holds the slot from start to end.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from comfy.errors import JobError
from comfy.job.input import parse_job_input
from comfy.job.result import JobResult
from comfy.job.stages import JobRun, leave_slot
from comfy.media.settings import MediaSettings
from comfy.server.runtime import WorkerRuntime

log = logging.getLogger("comfy.job.run")


def run_job(
    runtime: WorkerRuntime,
    raw_input: Any,
    job_id: str,
    send_progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
    discard_outputs: bool = False,
    save_dir: Path | None = None,
) -> JobResult:
    """Run one job and return the RunPod result (`error` set on failure).

    discard_outputs (the warm-up): run the workflow, deliver nothing; its files are removed.
    `save_dir` (local runs): every output is also written there, and its entry says where.
    """
    started = time.monotonic()
    cancel = cancel or threading.Event()
    crashed = False
    refresh: str | None = None
    pipeline = runtime.pipeline
    with pipeline.admit(job_id) as place:
        if not pipeline.pipelined:
            pipeline.take_slot(place)  # the whole job holds ComfyUI's slot: no other job is admitted anyway
        run: JobRun | None = None
        try:
            media = MediaSettings.from_env()  # per job: cheap, and an operator's change applies at once
            job = parse_job_input(raw_input, max_images=runtime.settings.max_images,
                                  max_input_bytes=media.max_input_bytes)
            run = JobRun(runtime, job, job_id, place, send_progress, cancel, started, media, discard_outputs, save_dir)
            result = run.run()
        except JobError as exc:
            log.warning("job %s failed: %s", job_id, exc.message)
            result = exc.to_result()
            crashed = run is not None and run.crashed
            refresh = exc.refresh_worker
        except Exception as exc:  # a bug of ours: still a clear failure, never a dead worker
            log.exception("job %s failed unexpectedly", job_id)
            result = {"error": f"internal worker error: {type(exc).__name__}: {exc}", "error_type": "internal"}
        if place.holds_slot:
            leave_slot(runtime, place)
    settings = runtime.settings
    if settings.refresh_worker or refresh == "always" or (
        (crashed or refresh == "after_crash") and settings.refresh_after_crash
    ):
        result["refresh_worker"] = True
    return JobResult(result)
