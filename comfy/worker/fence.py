"""The start fence: before a job runs, ask Supabase whether it still holds its task's claim.

RunPod has no idempotency key, so one task can reach RunPod as two jobs (a dispatcher that
died between /run and recording the job id, a /run answered 5xx after RunPod had taken
it). The dispatcher puts the task id and the claim's lease token into every job's input;
the worker calls the SQL function start_task(task_id, lease_token, runpod_job_id) before it
touches anything. Only the job holding the task's current claim gets 'started' (and its id
is recorded at that moment); any other returns at once with `error_type: superseded`,
having downloaded and queued nothing, and the dispatcher ignores that result.

    fence = TaskFence.from_env()
    refused = fence.check(job_input, job_id)   # None: run the job; else return `refused`

No-op without SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY, or for a job whose input names
no task and lease (a client calling the endpoint directly). If Supabase cannot be asked
(down for longer than `timeout_s`, or a database without start_task), the job runs: the
fence guards against duplicates, it must not stop all work while Supabase is away.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from typing import Any, Callable, Mapping

from comfy.errors import TaskSuperseded
from comfy.worker.supabase_rpc import SupabaseRpc

log = logging.getLogger("comfy.worker.fence")

DEFAULT_TIMEOUT_S = 30.0  # how long to keep asking an unreachable Supabase before running anyway
MISSING_FUNCTION = "PGRST202"  # PostgREST: no such function (the database lacks migration 0090)


class TaskFence:
    """Calls start_task() for jobs that name a Supabase task and lease token."""

    def __init__(self, rpc: SupabaseRpc, timeout_s: float = DEFAULT_TIMEOUT_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rpc = rpc
        self.enabled = rpc.enabled
        self.timeout_s = timeout_s
        self._sleep = sleep
        self.checks = 0  # calls answered, for tests and logs
        self.refused = 0
        self.unchecked = 0  # jobs run without an answer (Supabase away)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TaskFence":
        env = os.environ if env is None else env
        return cls(SupabaseRpc(env.get("SUPABASE_URL"), env.get("SUPABASE_SERVICE_ROLE_KEY")))

    def applies_to(self, job_input: Any) -> bool:
        """Whether `check` would ask Supabase (credentials set, the input names a task and lease):
        the handler hops to a thread for it only then."""
        return self.enabled and _claim_of(job_input) is not None

    def check(self, job_input: Any, job_id: str) -> dict[str, Any] | None:
        """None when the job may run; otherwise its result (error_type `superseded`)."""
        claim = _claim_of(job_input) if self.enabled else None
        if claim is None:
            return None
        task_id, lease_token = claim
        answer = self._ask(task_id, lease_token, job_id)
        if answer is None:
            return None
        outcome, reason = answer
        if outcome == "started":
            return None
        self.refused += 1
        log.info("job %s for task %s superseded (%s): not run", job_id, task_id, reason)
        return TaskSuperseded(
            f"job {job_id} no longer holds task {task_id}: {reason or outcome}; nothing was run",
            details={"task_id": task_id, "runpod_job_id": job_id, "outcome": outcome, "reason": reason},
        ).to_result()

    def _ask(self, task_id: str, lease_token: str, job_id: str) -> tuple[str, str | None] | None:
        deadline = time.monotonic() + self.timeout_s
        delay = 0.25
        while True:
            try:
                rows = self.rpc.call("start_task", {"p_task_id": task_id, "p_lease_token": lease_token,
                                                    "p_runpod_job_id": job_id})
            except Exception as exc:  # postgrest APIError, httpx errors
                if getattr(exc, "code", None) == MISSING_FUNCTION:
                    log.warning("Supabase has no start_task (apply migration 0090): job %s runs unchecked", job_id)
                    self.unchecked += 1
                    return None
                if time.monotonic() + delay > deadline:
                    log.warning("could not ask Supabase whether job %s may run task %s (%s); running it unchecked",
                                job_id, task_id, exc)
                    self.unchecked += 1
                    return None
                log.warning("start_task for job %s failed, asking again in %.1fs: %s", job_id, delay, exc)
                self._sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 4.0)
                continue
            self.checks += 1
            row = rows[0] if isinstance(rows, list) and rows else rows
            if not isinstance(row, dict) or not isinstance(row.get("outcome"), str):
                log.warning("start_task answered %r for job %s; running it unchecked", rows, job_id)
                self.unchecked += 1
                return None
            return row["outcome"], row.get("reason")


def _claim_of(job_input: Any) -> tuple[str, str] | None:
    """(task_id, lease_token) when the input names both as UUIDs, as the dispatcher's jobs do."""
    if not isinstance(job_input, dict):
        return None
    task_id, lease_token = job_input.get("task_id"), job_input.get("lease_token")
    if task_id is None or lease_token is None:
        return None
    try:
        return str(uuid.UUID(str(task_id))), str(uuid.UUID(str(lease_token)))
    except ValueError:
        log.warning("job input task_id %r / lease_token %r are not UUIDs: not a dispatcher's job, not fenced",
                    task_id, lease_token)
        return None
