"""Submitting claimed tasks to RunPod: /run, the job id recorded at once, the claim kept alive.

Each claimed task becomes its own submission (an asyncio task), so a /run that RunPod
throttles for a minute delays only its own task:

* the job input carries the task id and the claim's lease token (the worker's start
  fence, start_task(), lets only that claim's job run);
* the RunPod job id is recorded as soon as its /run answers (JobRecorder: one
  attach_runpod_jobs call at a time, carrying every answer that arrived meanwhile);
* while a submission is pending, its claim lease is extended (keep_leases), so no
  dispatcher requeues a task whose /run a live dispatcher is still working on; a claim
  that is gone meanwhile (cancelled) stops its submission;
* a job made for a claim that was lost before its id could be recorded is an orphan: it
  is cancelled on RunPod unless it already ended.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, TypeVar
from uuid import UUID

from supabase_sync.config import Route, Settings
from supabase_sync.jobs import BuiltJob, InvalidTaskParams
from supabase_sync.metrics import Metrics
from supabase_sync.runpod_api import (RunPodClient, RunPodError, RunPodRejected, RunPodUnavailable,
                                     SubmissionStopped)
from supabase_sync.store import ClaimedTask, TaskStore
from supabase_sync.webhooks import webhook_url

log = logging.getLogger("supabase_sync.submitter")

SUBMIT_CONCURRENCY = 16  # /run calls in flight per dispatcher; RunPod allows 200 concurrent per endpoint
# /run answered 401/403/404: the dispatcher's configuration is wrong, not the task.
CONFIG_ERROR_CODES = frozenset({401, 403, 404})
SHUTDOWN_GRACE_S = 10.0  # on stop, how long pending /run calls may still finish
# Answers that arrive this close together are recorded in one call (a group commit): each
# call is a database commit, and /run answers come in bursts.
RECORD_COALESCE_S = 0.01

T = TypeVar("T")


async def retry_database(call: Callable[[], Awaitable[T]], what: str, for_s: float) -> T:
    """Run a store call, retrying for about `for_s` seconds while Supabase is unreachable."""
    deadline = time.monotonic() + for_s
    delay = 0.2
    while True:
        try:
            return await call()
        except Exception as exc:  # PostgREST 503, connection refused, timeouts
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 5.0)


@dataclass
class Submission:
    """One claimed task on its way to RunPod."""

    route: Route
    claim: ClaimedTask
    built: BuiltJob | InvalidTaskParams  # the job input (jobs.JobBuilder), or why there is none
    job_id: str | None = None  # set when /run answered
    recorded: bool = False  # the job id is in the task row
    stop_reason: str | None = None  # set when the claim is gone: no more /run retries
    runner: asyncio.Task | None = field(default=None, repr=False)


class JobRecorder:
    """Records job ids as /run answers arrive: one attach_runpod_jobs call at a time, each
    carrying every answer that came in while the previous call was under way, or within
    RECORD_COALESCE_S of the first one."""

    def __init__(self, store: TaskStore, recheck_s: float, retry_for_s: float) -> None:
        self.store, self.recheck_s, self.retry_for_s = store, recheck_s, retry_for_s
        self._pending: list[tuple[UUID, UUID, str, asyncio.Future]] = []
        self._kick = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def record(self, task_id: UUID, lease_token: UUID, job_id: str) -> str:
        """Record one job id; returns the outcome ('applied', 'stale', 'not_found')."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((task_id, lease_token, job_id, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="job-recorder")
        self._kick.set()
        return await future

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            await asyncio.sleep(RECORD_COALESCE_S)
            self._kick.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            jobs = [(task_id, lease, job_id) for task_id, lease, job_id, _ in batch]
            try:
                # The jobs exist on RunPod now: losing their ids would get the tasks submitted
                # again, so keep trying (their claims are kept alive meanwhile).
                outcomes = await retry_database(lambda: self.store.attach_runpod_jobs(jobs, self.recheck_s),
                                                f"recording {len(jobs)} RunPod job ids", self.retry_for_s)
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            by_task = {o.task_id: o.outcome for o in outcomes}
            for task_id, _, _, future in batch:
                if not future.done():
                    future.set_result(by_task.get(task_id, "not_found"))


class Submitter:
    """The submissions of one dispatcher, per route."""

    def __init__(self, settings: Settings, store: TaskStore, runpod: RunPodClient, metrics: Metrics,
                 on_room: Callable[[], None]) -> None:
        self.settings, self.store, self.runpod, self.metrics = settings, store, runpod, metrics
        self._on_room = on_room  # called when a full route has room again
        self._slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        self._pending: dict[UUID, Submission] = {}
        self._full_routes: set[str] = set()
        self.recorder = JobRecorder(store, settings.status_check_s, settings.claim_lease_s * 0.8)

    # --- what the dispatch round asks ------------------------------------------------------

    def room(self, route: Route) -> int:
        """How many more tasks this route may claim now: pending submissions are capped at
        two claim batches, so a throttled endpoint stops its own claims, not the others'.
        Below a whole batch of room it waits (no claims of one or two rows) until the
        Submitter calls on_room."""
        room = max(0, 2 * self.settings.claim_batch - self._pending_for(route.endpoint_id))
        if room < self.settings.claim_batch:
            self._full_routes.add(route.endpoint_id)
            return 0
        return room

    def _pending_for(self, endpoint_id: str) -> int:
        return sum(1 for s in self._pending.values() if s.route.endpoint_id == endpoint_id)

    def start(self, route: Route, claim: ClaimedTask, built: BuiltJob | InvalidTaskParams) -> None:
        """Submit one claimed task, whose job input is built, in the background."""
        submission = Submission(route, claim, built)
        self._pending[claim.task_id] = submission
        submission.runner = asyncio.create_task(self._submit(submission), name=f"submit-{claim.task_id}")
        submission.runner.add_done_callback(lambda _: self._finished(submission))

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no submission is pending; False if some still are after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._pending:
            runners = [s.runner for s in self._pending.values() if s.runner is not None]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(runners, timeout=left)
        return True

    async def shutdown(self) -> None:
        """Let pending /run calls finish for a while; then stop the rest, record the job ids
        already known and give the other claims back."""
        if not await self.wait_idle(SHUTDOWN_GRACE_S):
            left = list(self._pending.values())
            log.warning("stopping with %d submissions still pending", len(left))
            for submission in left:
                if submission.runner is not None:
                    submission.runner.cancel()
            await asyncio.gather(*(s.runner for s in left if s.runner is not None), return_exceptions=True)
            known = [(s.claim.task_id, s.claim.lease_token, s.job_id) for s in left if s.job_id and not s.recorded]
            if known:
                try:
                    await self.store.attach_runpod_jobs(known, self.settings.status_check_s)
                except Exception as exc:  # their workers' start fence still records them
                    log.warning("could not record %d RunPod job ids while stopping: %s", len(known), exc)
            for submission in left:
                if submission.job_id is not None:
                    continue
                # If RunPod took a /run that was cut off here, that job belongs to this claim:
                # the worker's start fence refuses it once the claim is given back.
                try:
                    await self.store.release_task(submission.claim.task_id, submission.claim.lease_token, 0,
                                                  "the dispatcher stopped before RunPod answered /run")
                except Exception as exc:  # the lease will expire instead
                    log.warning("task %s: could not give the claim back: %s", submission.claim.task_id, exc)
        await self.recorder.aclose()

    def _finished(self, submission: Submission) -> None:
        self._pending.pop(submission.claim.task_id, None)
        if submission.runner is not None and not submission.runner.cancelled():
            exc = submission.runner.exception()
            if exc is not None:
                log.error("task %s: submission failed (%s): %s", submission.claim.task_id, type(exc).__name__, exc)
        endpoint = submission.route.endpoint_id
        if endpoint in self._full_routes and self._pending_for(endpoint) <= self.settings.claim_batch:
            self._full_routes.discard(endpoint)
            self._on_room()

    # --- keeping claims alive ----------------------------------------------------------------

    async def keep_leases(self) -> int:
        """Extend the claim of every submission whose job id is not recorded yet; tell those
        whose claim is gone to stop retrying /run. Returns how many claims were extended."""
        held = [(s.claim.task_id, s.claim.lease_token) for s in self._pending.values() if not s.recorded]
        if not held:
            return 0
        outcomes = await self.store.extend_leases(held, self.settings.claim_lease_s)
        for outcome in outcomes:
            submission = self._pending.get(outcome.task_id)
            if submission is None or submission.job_id is not None or submission.stop_reason:
                continue
            # complete / failed: its job's result came in before /run answered; let that answer
            # arrive (it is then recorded as 'applied'). Any other lost claim: stop retrying.
            if outcome.outcome == "not_found" or (outcome.outcome == "stale" and outcome.status not in ("complete", "failed")):
                submission.stop_reason = (f"the task is {outcome.status}" if outcome.status == "cancelled" else
                                          "the task is gone" if outcome.outcome == "not_found" else
                                          f"the task is {outcome.status} under another claim")
                log.info("task %s: %s while /run was still being tried; no more retries", outcome.task_id,
                         submission.stop_reason)
        return sum(1 for o in outcomes if o.outcome == "extended")

    # --- one submission ----------------------------------------------------------------------

    async def _submit(self, submission: Submission) -> None:
        route, task = submission.route, submission.claim
        if isinstance(submission.built, InvalidTaskParams):
            error = f"invalid params: {submission.built}"
            await self._write_back(lambda: self._fail(task, error), task, "failing it")
            return
        job_input = submission.built.input
        webhook = None
        if self.settings.public_url and self.settings.webhook_secret:
            webhook = webhook_url(self.settings.public_url, self.settings.webhook_secret, task.task_id, task.lease_token)
        try:
            async with self._slots:
                if submission.stop_reason:
                    raise SubmissionStopped(submission.stop_reason)
                submission.job_id = await self.runpod.run(route.endpoint_id, job_input, webhook=webhook,
                                                          policy=route.policy(),
                                                          keep_trying=lambda: submission.stop_reason is None)
        except SubmissionStopped as exc:
            # The claim is gone: nothing to give back. A job an earlier try may have made is
            # refused by its worker's start fence.
            self.metrics.outcome("submission_stopped")
            log.info("task %s: submission stopped: %s", task.task_id, exc)
            return
        except RunPodUnavailable as exc:
            # 429 after the retries, no connection, or 5xx / a cut connection after sending (RunPod
            # may then have made a job: the claim is given back, so the fence refuses that job).
            self.metrics.runpod_error("unavailable")
            delay = exc.retry_after_s if exc.retry_after_s is not None else self.settings.poll_interval_s
            delay *= 1 + random.random()
            reason = f"RunPod /run unavailable, will retry: {exc}"
            await self._write_back(lambda: self._release(task, delay, reason), task, "giving the claim back")
            return
        except RunPodRejected as exc:
            self.metrics.runpod_error(f"http_{exc.status_code}")
            if exc.status_code in CONFIG_ERROR_CODES:
                log.error("RunPod refused /run for endpoint %s (check RUNPOD_API_KEY and the route): %s",
                          route.endpoint_id, exc)
                reason = f"RunPod refused /run: {exc}"
                await self._write_back(lambda: self._release(task, self.settings.poll_interval_s * 4, reason),
                                       task, "giving the claim back")
            else:
                error = f"RunPod refused the job: {exc}"
                await self._write_back(lambda: self._fail(task, error), task, "failing it")
            return
        except RunPodError as exc:  # answered 200 without a job id
            self.metrics.runpod_error("bad_answer")
            reason = f"RunPod /run gave no job id, will retry: {exc}"
            await self._write_back(lambda: self._release(task, self.settings.poll_interval_s, reason),
                                   task, "giving the claim back")
            return
        created = task.created_at if task.created_at.tzinfo else task.created_at.replace(tzinfo=timezone.utc)
        self.metrics.dispatch_latency(max(0.0, (datetime.now(timezone.utc) - created).total_seconds()))
        outcome = await self.recorder.record(task.task_id, task.lease_token, submission.job_id)
        submission.recorded = True
        if outcome == "applied":
            self.metrics.outcome("submitted")
            return
        await self._orphan(route.endpoint_id, task.task_id, submission.job_id, outcome)

    async def _orphan(self, endpoint_id: str, task_id: UUID, job_id: str, outcome: str) -> None:
        """/run made a job for a claim that is gone: cancel it, unless it already ended (then
        its result came in before /run answered, and nothing is running)."""
        try:
            status = await self.runpod.status(endpoint_id, job_id)
        except RunPodError:
            status = None
        if status is not None and status.finished:
            log.info("task %s: job %s ended (%s) before its id could be recorded (%s); nothing to cancel",
                     task_id, job_id, status.status, outcome)
            self.metrics.outcome("orphan_finished")
            return
        log.warning("task %s: the claim was lost (%s) before job %s was recorded; cancelling the job on RunPod",
                    task_id, outcome, job_id)
        self.metrics.outcome("orphan_cancelled")
        try:
            await self.runpod.cancel(endpoint_id, job_id)
        except RunPodError as exc:  # its worker's start fence still refuses it
            log.warning("RunPod /cancel of orphan job %s failed: %s", job_id, exc)

    async def _release(self, task: ClaimedTask, delay_s: float, reason: str) -> None:
        outcome = await self.store.release_task(task.task_id, task.lease_token, delay_s, reason)
        self.metrics.outcome("released" if outcome == "applied" else "stale")

    async def _fail(self, task: ClaimedTask, error: str) -> None:
        outcome = await self.store.fail_task(task.task_id, task.lease_token, None, error, False,
                                             self.settings.retry_backoff_base_s, self.settings.retry_backoff_max_s)
        self.metrics.outcome({"queued": "retried", "failed": "failed"}.get(outcome, "stale"))
        if outcome == "failed":
            log.info("task %s: failed (%s)", task.task_id, error[:300])

    async def _write_back(self, call: Callable[[], Awaitable[Any]], task: ClaimedTask, what: str) -> None:
        try:
            await retry_database(call, f"task {task.task_id}: {what}", self.settings.claim_lease_s * 0.5)
        except Exception as exc:  # the claim is not extended any more: it expires and is requeued
            log.warning("task %s: %s failed (%s); its claim will expire and be requeued", task.task_id, what, exc)
