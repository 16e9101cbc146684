"""The dispatcher loop: claim queued tasks, submit them to RunPod, follow them to the end.

One round (dispatch_once) per route: claim batches while the route has room (the SQL
function enforces the endpoint's concurrency limit across dispatchers), build the batch's
job inputs (templates rendered, dependency outputs resolved: jobs.JobBuilder) and hand
each claimed task to the Submitter (submitter.py), which submits it in the background and
records its job id as soon as /run answers. Results arrive by webhook (webapp.py ->
apply_status); in-flight tasks whose webhook is late are polled on /status
(check_due_polls), so a lost webhook or a restarted dispatcher loses nothing. The loop runs
a round when woken (LISTEN/NOTIFY, or the pg_net trigger's hook) or every POLL_INTERVAL
seconds; a cancel's wake-up sends pending RunPod cancels at once, beside the claims. The
chores (maintain) run every POLL_INTERVAL, each on its own, so one failing never skips the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from typing import Any, Awaitable, Callable
from uuid import UUID


from supabase_sync.config import Route, Settings
from supabase_sync.jobs import BuiltJob, InvalidTaskParams, JobBuilder, JobOutcome, interpret_status
from supabase_sync.metrics import Metrics
from supabase_sync.migrations import discover
from supabase_sync.migrations.catalog import newest_version
from supabase_sync.runpod_api import JobStatus, RunPodClient, RunPodRejected, RunPodUnavailable
from supabase_sync.store import ClaimedTask, MalformedRow, TaskStore
from supabase_sync.submitter import Submitter
from supabase_sync.templates import TableSource, TemplateCatalog

log = logging.getLogger("supabase_sync.dispatcher")

POLL_BATCH = 200  # in-flight tasks checked on /status per chore
CANCEL_BATCH = 100


class Dispatcher:
    """Moves tasks between the Supabase queue and RunPod endpoints."""

    def __init__(self, settings: Settings, store: TaskStore, runpod: RunPodClient, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.runpod = runpod
        self.metrics = metrics or Metrics()
        self._wake = asyncio.Event()
        self._cancel_wake = asyncio.Event()
        self.submitter = Submitter(settings, store, runpod, self.metrics, on_room=self._wake.set)
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

    def _limit(self, wanted: int) -> int:
        # PostgREST returns at most Max rows: a set-returning chore must not act on more
        return max(1, min(wanted, self.settings.max_rows))

    # --- submitting ---------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Claim what the routes allow now and start submitting it; returns how many tasks were claimed."""
        claimed_total = 0
        for route in self.settings.routing.routes:
            while True:
                limit = min(self.settings.claim_batch, self.submitter.room(route))
                if limit <= 0:
                    break  # this route's submissions are backed up; the Submitter wakes us when there is room
                claimed = await self.store.claim_tasks(
                    self.settings.dispatcher_id, route.endpoint_id, route.task_types,
                    limit, route.max_in_flight, self.settings.claim_lease_s,
                )
                for bad in claimed.malformed:
                    await self._quarantine(bad)
                built = await self._build(route, claimed) if claimed else []
                if built is None:
                    break  # given back; claiming more would only give those back too
                for task, job in zip(claimed, built):
                    self.submitter.start(route, task, job)
                claimed_total += len(claimed)
                if len(claimed) + len(claimed.malformed) < limit:
                    break
        self.last_round_ok = time.monotonic()
        return claimed_total

    async def _build(self, route: Route, claimed: list[ClaimedTask]) -> list[BuiltJob | InvalidTaskParams] | None:
        """The batch's job inputs; None (the claims given back) when templates or dependency
        outputs could not be read: nothing about the tasks is decided then."""
        try:
            return await self.jobs.build(route, claimed)
        except Exception as exc:
            log.warning("building %d job inputs failed, giving the tasks back: %s", len(claimed), exc)
            reason = f"could not read templates or dependency outputs, will retry: {exc}"
            # if the database is what failed, these fail too: the leases then expire and requeue them
            await asyncio.gather(*(self.store.release_task(task.task_id, task.lease_token,
                                                           self.settings.poll_interval_s * (1 + random.random()), reason)
                                   for task in claimed), return_exceptions=True)
            return None

    async def _quarantine(self, bad: MalformedRow) -> None:
        """A row this dispatcher cannot read: failed with the problem, so it is not handed out again."""
        self.metrics.outcome("quarantined")
        if bad.task_id is None:
            return  # not even its id is readable; store.py logged it
        outcome = await self.store.quarantine_task(bad.task_id, f"{bad.function} returned it as: {bad.problem}")
        log.error("task %s quarantined (%s): %s", bad.task_id, outcome, bad.problem)

    # --- results ------------------------------------------------------------------------

    async def apply_status(self, task_id: UUID, lease_token: UUID, status: JobStatus | None,
                           runpod_job_id: str | None = None) -> str:
        """Write a job's status back to its task (from a webhook or a /status poll).

        Returns the store's outcome: 'applied' / 'queued' / 'failed' / 'stale' / 'not_found',
        or 'running' when the job has not finished (its progress is mirrored).
        """
        if status is None:
            # RunPod forgot the job (result retention or ttl passed): run the task again.
            return await self._fail(task_id, lease_token, runpod_job_id,
                                    f"RunPod no longer has job {runpod_job_id} (result expired or ttl passed)",
                                    retryable=True)
        outcome: JobOutcome = interpret_status(status)
        if outcome.kind == "running":
            if outcome.progress is not None:
                return await self.store.record_progress(task_id, lease_token, outcome.progress)
            return "running"
        if outcome.kind == "superseded":
            # the worker's start fence refused the job: it belongs to an older claim and ran nothing
            self.metrics.outcome("superseded")
            log.info("task %s: job %s was superseded and ran nothing (%s)", task_id, status.id, outcome.error)
            return "stale"
        if outcome.kind == "complete":
            result = await self.store.complete_task(task_id, lease_token, status.id, outcome.output_url, outcome.result)
            self.metrics.outcome("complete" if result == "applied" else result)
            if result == "applied":
                # a slot of the endpoint is free, and dependants may have been released: claim now
                self._wake.set()
            return result
        return await self._fail(task_id, lease_token, status.id, outcome.error or "failed", outcome.retryable)

    async def _fail(self, task_id: UUID, lease_token: UUID, runpod_job_id: str | None, error: str,
                    retryable: bool) -> str:
        outcome = await self.store.fail_task(task_id, lease_token, runpod_job_id, error, retryable,
                                             self.settings.retry_backoff_base_s, self.settings.retry_backoff_max_s)
        self.metrics.outcome({"queued": "retried", "failed": "failed"}.get(outcome, "stale"))
        if outcome in ("queued", "failed"):
            log.info("task %s: %s (%s)", task_id, outcome, error[:300])
        return outcome

    # --- chores -------------------------------------------------------------------------

    async def quarantine_malformed(self) -> int:
        """Fail the rows no dispatcher can handle (SQL names each problem); cancel their jobs."""
        rows = await self.store.quarantine_malformed_tasks(self._limit(100))
        for row in rows:
            log.error("task %s quarantined: %s", row.task_id, row.problem)
            self.metrics.outcome("quarantined")
            if row.endpoint_id and row.runpod_job_id:  # its result could never be written back
                await self._cancel_quietly(row.endpoint_id, row.runpod_job_id)
        return len(rows)

    async def requeue_expired(self) -> int:
        """Claims that expired before a RunPod job was recorded: their dispatcher stopped."""
        rows = await self.store.requeue_lost_claims(self._limit(1000))
        if rows:
            requeued = sum(1 for r in rows if r.outcome == "queued")
            by = ", ".join(f"{who or 'unknown'} ({n})" for who, n in Counter(r.claimed_by for r in rows).most_common())
            log.warning("%d claims expired before a RunPod job was recorded (claimed by %s, which stopped or lost "
                        "Supabase): %d queued again with the attempt given back, %d failed after too many lost claims",
                        len(rows), by, requeued, len(rows) - requeued)
            self.metrics.outcome("lease_expired", len(rows))
        return len(rows)

    async def check_due_polls(self) -> int:
        """Poll /status for in-flight tasks whose webhook is overdue; returns how many were checked."""
        due = await self.store.take_due_polls(self.settings.dispatcher_id, self._limit(POLL_BATCH),
                                              self.settings.status_check_s)
        for bad in due.malformed:
            await self._quarantine(bad)

        async def check(poll: Any) -> None:
            try:
                status = await self.runpod.status(poll.endpoint_id, poll.runpod_job_id)
            except (RunPodUnavailable, RunPodRejected) as exc:
                self.metrics.runpod_error("status")
                log.warning("task %s: /status failed, will check again: %s", poll.task_id, exc)
                return
            await self.apply_status(poll.task_id, poll.lease_token, status, poll.runpod_job_id)

        results = await asyncio.gather(*(check(poll) for poll in due), return_exceptions=True)
        for poll, result in zip(due, results):  # one failing write-back never stops the others
            if isinstance(result, Exception):
                log.error("task %s: status write-back failed (%s): %s", poll.task_id, type(result).__name__, result)
        return len(due)

    async def send_cancels(self) -> int:
        """Cancel on RunPod the jobs of tasks cancelled in Supabase."""
        pending = await self.store.take_pending_cancels(self._limit(CANCEL_BATCH), self.settings.status_check_s)
        for bad in pending.malformed:
            log.error("take_pending_cancels returned a malformed row for task %s: %s", bad.task_id, bad.problem)
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

    async def fail_unroutable(self) -> int:
        """With UNKNOWN_TASK_TYPES=fail: queued rows no route knows, failed naming their type."""
        if self.settings.routing.unknown_task_types != "fail":
            return 0
        failed = await self.store.fail_unroutable(self.settings.routing.task_types, self._limit(100))
        if failed:
            self.metrics.outcome("unroutable", len(failed))
        return len(failed)

    async def _cancel_quietly(self, endpoint_id: str, job_id: str) -> None:
        try:
            await self.runpod.cancel(endpoint_id, job_id)
        except (RunPodUnavailable, RunPodRejected) as exc:
            log.warning("RunPod /cancel of job %s failed: %s", job_id, exc)

    async def maintain(self) -> None:
        """The periodic chores, each on its own: a failing one is logged and the others still run."""
        chores: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("quarantine of malformed rows", self.quarantine_malformed),
            ("requeue of expired claims", self.requeue_expired),
            ("status polls", self.check_due_polls),
            ("RunPod cancels", self.send_cancels),
            ("unroutable tasks", self.fail_unroutable),
        ]
        for name, chore in chores:
            await self._chore(name, chore)

    async def _chore(self, name: str, chore: Callable[[], Awaitable[Any]]) -> None:
        try:
            await chore()
        except Exception as exc:
            log.error("%s failed (%s): %s", name, type(exc).__name__, exc)

    # --- loops --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch on every wake-up or poll interval, maintain and heartbeat, until stop is set."""
        chores = asyncio.create_task(self._every(stop, self.settings.poll_interval_s, self.maintain, "maintenance"))
        beats = asyncio.create_task(self._every(stop, self.settings.heartbeat_s, self.heartbeat, "heartbeat"))
        cancels = asyncio.create_task(self._cancels_when_woken(stop))
        # claims are kept alive until the submissions are done, past `stop` (shutdown's grace)
        submissions_done = asyncio.Event()
        leases = asyncio.create_task(self._every(submissions_done, max(0.1, self.settings.claim_lease_s / 3),
                                                 self.submitter.keep_leases, "lease keeping"))
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
            for chore in (chores, cancels):
                chore.cancel()
            await asyncio.gather(chores, cancels, return_exceptions=True)
            await self.submitter.shutdown()
            submissions_done.set()
            for chore in (leases, beats):
                chore.cancel()
            await asyncio.gather(leases, beats, return_exceptions=True)
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
            self._cancel_wake.clear()  # wake-ups during this chore run it once more, not once each
            await self._chore("RunPod cancels", self.send_cancels)

    async def _every(self, stop: asyncio.Event, interval_s: float, chore: Any, name: str) -> None:
        while not stop.is_set():
            await self._chore(name, chore)
            await _sleep_or_stop(stop, interval_s)


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
