"""The dispatcher loop: claim queued tasks, submit them to RunPod, follow them to the end.

One round (dispatch_once) per route: claim a batch (the SQL function enforces the
endpoint's concurrency limit across dispatchers), build each job input, POST /run for
all of them concurrently, then record the RunPod job ids in one call. Results arrive by
webhook (webapp.py -> apply_status); in-flight tasks whose webhook is late are polled on
/status (check_due_polls), so a lost webhook or a restarted dispatcher loses nothing.
The loop runs a round when woken (LISTEN/NOTIFY, or the pg_net trigger's hook) or every
POLL_INTERVAL seconds; a cancel notification sends pending RunPod cancels at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime, timezone
from typing import Any
from uuid import UUID


from supabase_sync.config import Route, Settings
from supabase_sync.jobs import BuiltJob, InvalidTaskParams, JobBuilder, JobOutcome, interpret_status
from supabase_sync.metrics import Metrics
from supabase_sync.migrations import discover
from supabase_sync.migrations.catalog import newest_version
from supabase_sync.runpod_api import JobStatus, RunPodClient, RunPodRejected, RunPodUnavailable
from supabase_sync.store import ClaimedTask, TaskStore
from supabase_sync.templates import TableSource, TemplateCatalog
from supabase_sync.webhooks import webhook_url

log = logging.getLogger("supabase_sync.dispatcher")

SUBMIT_CONCURRENCY = 16  # /run calls in flight per dispatcher; RunPod allows 200 concurrent per endpoint
# /run answered 401/403/404: the dispatcher's configuration is wrong, not the task.
CONFIG_ERROR_CODES = frozenset({401, 403, 404})


class Dispatcher:
    """Moves tasks between the Supabase queue and RunPod endpoints."""

    def __init__(self, settings: Settings, store: TaskStore, runpod: RunPodClient, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.runpod = runpod
        self.metrics = metrics or Metrics()
        self._wake = asyncio.Event()
        self._cancel_wake = asyncio.Event()
        self._submit_slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        self.last_round_ok: float | None = None
        # templates (folders first, then the workflow_templates table) and dependency outputs
        self.jobs = JobBuilder(store, TemplateCatalog(settings.template_dirs, TableSource(store)))
        # Reported in the heartbeat: `migrate` holds back a post migration while a dispatcher
        # that does not ship it is alive (supabase_sync/migrations/runner.py).
        self.newest_migration = newest_version(discover())

    def wake(self) -> None:
        """Run a dispatch round now (a NOTIFY on insert, or the pg_net trigger's hook)."""
        self._wake.set()

    def wake_cancels(self) -> None:
        """Send pending RunPod cancels now (a NOTIFY on cancel), not at the next maintenance round."""
        self._cancel_wake.set()

    # --- submitting ---------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Claim and submit what the routes allow now; returns how many tasks were submitted."""
        submitted = 0
        for route in self.settings.routing.routes:
            while True:
                claimed = await self.store.claim_tasks(
                    self.settings.dispatcher_id, route.endpoint_id, route.task_types,
                    self.settings.claim_batch, route.max_in_flight, self.settings.claim_lease_s,
                )
                if not claimed:
                    break
                submitted += await self._submit_batch(route, claimed)
                if len(claimed) < self.settings.claim_batch:
                    break
        self.last_round_ok = time.monotonic()
        return submitted

    async def _submit_batch(self, route: Route, claimed: list[ClaimedTask]) -> int:
        try:
            built = await self.jobs.build(route, claimed)
        except Exception as exc:  # templates or dependency outputs could not be read: decide nothing now
            log.warning("building %d job inputs failed, giving the tasks back: %s", len(claimed), exc)
            reason = f"could not read templates or dependency outputs, will retry: {exc}"
            # if the database is what failed, these fail too: the leases then expire and requeue them
            await asyncio.gather(*(self._release(task, self.settings.poll_interval_s * (1 + random.random()), reason)
                                   for task in claimed), return_exceptions=True)
            return 0
        results = await asyncio.gather(*(self._submit(route, task, job) for task, job in zip(claimed, built)))
        jobs = [(task.task_id, task.lease_token, job_id) for task, job_id in zip(claimed, results) if job_id]
        if not jobs:
            return 0
        outcomes = await self._attach(jobs)
        for outcome in outcomes:
            if outcome.outcome != "applied":
                # The claim was lost meanwhile (lease expired, cancelled): the job runs but its
                # result will be refused as stale; cancel it so it does not burn a GPU.
                log.warning("task %s: job attached too late (%s); cancelling it on RunPod", outcome.task_id, outcome.outcome)
                job_id = next(j for t, _, j in jobs if t == outcome.task_id)
                await self._cancel_quietly(route.endpoint_id, job_id)
        self.metrics.outcome("submitted", len(jobs))
        return len(jobs)

    async def _attach(self, jobs: list[tuple[UUID, UUID, str]]) -> list[Any]:
        # The jobs exist on RunPod now: losing their ids would get the tasks submitted again
        # once the claim lease expires, so keep trying for most of that lease.
        deadline = time.monotonic() + self.settings.claim_lease_s * 0.8
        delay = 0.2
        while True:
            try:
                return await self.store.attach_runpod_jobs(jobs, self.settings.status_check_s)
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("recording %d RunPod job ids failed, retrying in %.1fs: %s", len(jobs), delay, exc)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 5.0)

    async def _submit(self, route: Route, task: ClaimedTask, built: BuiltJob | InvalidTaskParams) -> str | None:
        """POST /run for one claimed task; on failure the task is failed or released here."""
        if isinstance(built, InvalidTaskParams):
            await self._fail(task, None, f"invalid params: {built}", retryable=False)
            return None
        job_input = built.input
        webhook = None
        if self.settings.public_url and self.settings.webhook_secret:
            webhook = webhook_url(self.settings.public_url, self.settings.webhook_secret, task.task_id, task.lease_token)
        try:
            async with self._submit_slots:
                job_id = await self.runpod.run(route.endpoint_id, job_input, webhook=webhook, policy=route.policy())
        except RunPodUnavailable as exc:
            self.metrics.runpod_error("unavailable")
            delay = exc.retry_after_s if exc.retry_after_s is not None else self.settings.poll_interval_s
            await self._release(task, delay * (1 + random.random()), f"RunPod /run unavailable, will retry: {exc}")
            return None
        except RunPodRejected as exc:
            self.metrics.runpod_error(f"http_{exc.status_code}")
            if exc.status_code in CONFIG_ERROR_CODES:
                log.error("RunPod refused /run for endpoint %s (check RUNPOD_API_KEY and the route): %s",
                          route.endpoint_id, exc)
                await self._release(task, self.settings.poll_interval_s * 4, f"RunPod refused /run: {exc}")
            else:
                await self._fail(task, None, f"RunPod refused the job: {exc}", retryable=False)
            return None
        created = task.created_at if task.created_at.tzinfo else task.created_at.replace(tzinfo=timezone.utc)
        self.metrics.dispatch_latency(max(0.0, (datetime.now(timezone.utc) - created).total_seconds()))
        return job_id

    async def _release(self, task: ClaimedTask, delay_s: float, reason: str) -> None:
        outcome = await self.store.release_task(task.task_id, task.lease_token, delay_s, reason)
        self.metrics.outcome("released" if outcome == "applied" else "stale")

    async def _fail(self, task_or_poll: Any, runpod_job_id: str | None, error: str, retryable: bool) -> str:
        outcome = await self.store.fail_task(
            task_or_poll.task_id, task_or_poll.lease_token, runpod_job_id, error, retryable,
            self.settings.retry_backoff_base_s, self.settings.retry_backoff_max_s,
        )
        self.metrics.outcome({"queued": "retried", "failed": "failed"}.get(outcome, "stale"))
        if outcome in ("queued", "failed"):
            log.info("task %s: %s (%s)", task_or_poll.task_id, outcome, error[:300])
        return outcome

    # --- results ------------------------------------------------------------------------

    async def apply_status(self, task_id: UUID, lease_token: UUID, status: JobStatus | None,
                           runpod_job_id: str | None = None) -> str:
        """Write a job's status back to its task (from a webhook or a /status poll).

        Returns the store's outcome: 'applied' / 'queued' / 'failed' / 'stale' / 'not_found',
        or 'running' when the job has not finished (its progress is mirrored).
        """
        if status is None:
            # RunPod forgot the job (result retention or ttl passed): run the task again.
            return await self._fail(_Held(task_id, lease_token), runpod_job_id,
                                    f"RunPod no longer has job {runpod_job_id} (result expired or ttl passed)",
                                    retryable=True)
        outcome: JobOutcome = interpret_status(status)
        if outcome.kind == "running":
            if outcome.progress is not None:
                return await self.store.record_progress(task_id, lease_token, outcome.progress)
            return "running"
        if outcome.kind == "complete":
            result = await self.store.complete_task(task_id, lease_token, status.id, outcome.output_url, outcome.result)
            self.metrics.outcome("complete" if result == "applied" else result)
            if result == "applied":
                # a slot of the endpoint is free, and dependants may have been released: claim now
                self.wake()
            return result
        return await self._fail(_Held(task_id, lease_token), status.id, outcome.error or "failed", outcome.retryable)

    async def check_due_polls(self) -> int:
        """Poll /status for in-flight tasks whose webhook is overdue; returns how many were checked."""
        due = await self.store.take_due_polls(self.settings.dispatcher_id, 200, self.settings.status_check_s)

        async def check(poll: Any) -> None:
            try:
                status = await self.runpod.status(poll.endpoint_id, poll.runpod_job_id)
            except (RunPodUnavailable, RunPodRejected) as exc:
                self.metrics.runpod_error("status")
                log.warning("task %s: /status failed, will check again: %s", poll.task_id, exc)
                return
            await self.apply_status(poll.task_id, poll.lease_token, status, poll.runpod_job_id)

        await asyncio.gather(*(check(poll) for poll in due))
        return len(due)

    async def send_cancels(self) -> int:
        """Cancel on RunPod the jobs of tasks cancelled in Supabase."""
        pending = await self.store.take_pending_cancels(100, self.settings.status_check_s)
        for item in pending:
            if item.endpoint_id is None:
                continue
            try:
                await self.runpod.cancel(item.endpoint_id, item.runpod_job_id)
            except (RunPodUnavailable, RunPodRejected) as exc:
                self.metrics.runpod_error("cancel")
                log.warning("task %s: RunPod /cancel failed, will retry: %s", item.task_id, exc)
                continue
            await self.store.mark_runpod_cancelled(item.task_id)
            self.metrics.outcome("cancelled")
        return len(pending)

    async def _cancel_quietly(self, endpoint_id: str, job_id: str) -> None:
        try:
            await self.runpod.cancel(endpoint_id, job_id)
        except (RunPodUnavailable, RunPodRejected) as exc:
            log.warning("RunPod /cancel of orphan job %s failed: %s", job_id, exc)

    async def maintain(self) -> None:
        """The periodic chores: expired claims, overdue jobs, cancellations, unknown types."""
        requeued = await self.store.requeue_expired_leases()
        if requeued:
            log.warning("requeued %d tasks whose dispatcher stopped before submitting them", len(requeued))
            self.metrics.outcome("lease_expired", len(requeued))
        await self.check_due_polls()
        await self.send_cancels()
        if self.settings.routing.unknown_task_types == "fail":
            failed = await self.store.fail_unroutable(self.settings.routing.task_types)
            if failed:
                self.metrics.outcome("unroutable", len(failed))

    # --- loops --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch on every wake-up or poll interval, maintain and heartbeat, until stop is set."""
        chores = asyncio.create_task(self._every(stop, self.settings.poll_interval_s, self.maintain, "maintenance"))
        beats = asyncio.create_task(self._every(stop, self.settings.heartbeat_s, self.heartbeat, "heartbeat"))
        cancels = asyncio.create_task(self._cancels_when_woken(stop))
        failures = 0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.dispatch_once()
                    failures = 0
                except Exception as exc:  # the loop must outlive a bad round (database or network down)
                    failures += 1
                    log.error("dispatch round failed (%s): %s", type(exc).__name__, exc)
                    await _sleep_or_stop(stop, min(30.0, 0.5 * 2 ** min(failures, 6)))
                    continue
                await _wait_any(stop, self._wake, self.settings.poll_interval_s)
        finally:
            for chore in (chores, beats, cancels):
                chore.cancel()
            await asyncio.gather(chores, beats, cancels, return_exceptions=True)
            try:
                await self.store.heartbeat(self.settings.dispatcher_id, "stopped", None, self._worker_metadata())
            except Exception as exc:  # shutting down anyway
                log.warning("final heartbeat failed: %s", exc)

    async def heartbeat(self) -> None:
        await self.store.heartbeat(self.settings.dispatcher_id, "active", None, self._worker_metadata())

    def _worker_metadata(self) -> dict[str, Any]:
        return {
            "kind": "dispatcher",
            "routes": {r.endpoint_id: r.task_types for r in self.settings.routing.routes},
            "newest_migration": self.newest_migration,
            "heartbeat_s": self.settings.heartbeat_s,
        }

    async def _cancels_when_woken(self, stop: asyncio.Event) -> None:
        # The maintenance round still sends cancels every POLL_INTERVAL: this only makes it prompt.
        while not stop.is_set():
            await _wait_any(stop, self._cancel_wake, None)
            if stop.is_set():
                return
            self._cancel_wake.clear()
            try:
                await self.send_cancels()
            except Exception as exc:
                log.error("sending cancels failed (%s): %s", type(exc).__name__, exc)

    async def _every(self, stop: asyncio.Event, interval_s: float, chore: Any, name: str) -> None:
        while not stop.is_set():
            try:
                await chore()
            except Exception as exc:
                log.error("%s failed (%s): %s", name, type(exc).__name__, exc)
            await _sleep_or_stop(stop, interval_s)


class _Held:
    """A task id and lease token, for write-backs that do not start from a claim."""

    def __init__(self, task_id: UUID, lease_token: UUID) -> None:
        self.task_id, self.lease_token = task_id, lease_token


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout_s: float | None) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
