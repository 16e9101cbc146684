"""The scaler's loop: observe each endpoint, decide with `supabase_sync.scaler.rule`, apply.

One pass, for every endpoint of the routes:
1. observe: its queue in Supabase (`scaler_queue_counts`, an RPC) and RunPod's `/health`;
2. decide: `scaler.decide` with the endpoint's rule, its current limits and the clock;
3. apply: `PATCH /v2/serverless/{id}` only when the target differs from the current
   setting; on failure the last good setting is kept and the next pass tries again;
4. report: every decision is logged and handed to the listeners (with `dry_run`, the
   command line prints it); unless dry-run, it is recorded in Supabase
   (`record_scaler_decision`), where the dispatcher's /metrics reads it.

An endpoint whose queue or health cannot be read this pass is left as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from supabase_sync.scaler.runpod_management import ManagementApiError
from supabase_sync.scaler.rule import EndpointLoad, ScalingDecision, WorkerLimits, decide
from supabase_sync.scaler.config import ScaledEndpoint

log = logging.getLogger("supabase_sync.scaler")

Outcome = Literal["applied", "unchanged", "dry_run", "apply_failed", "observe_failed"]


class QueueCounts(BaseModel):
    """One endpoint's queue as `scaler_queue_counts` returns it."""

    queued_ready: int = Field(ge=0)
    queued_waiting: int = Field(ge=0)
    in_progress: int = Field(ge=0)
    backlog_queued: int = Field(0, ge=0)
    backlog_in_progress: int = Field(0, ge=0)


class _HealthJobs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inQueue: int = 0  # noqa: N815 (RunPod's field names)
    inProgress: int = 0  # noqa: N815


class _HealthWorkers(BaseModel):
    model_config = ConfigDict(extra="ignore")

    idle: int = 0
    running: int = 0


class RunpodHealth(BaseModel):
    """The parts of RunPod's `GET /v2/{id}/health` the rule uses."""

    model_config = ConfigDict(extra="ignore")

    jobs: _HealthJobs = Field(default_factory=_HealthJobs)
    workers: _HealthWorkers = Field(default_factory=_HealthWorkers)


class QueueSource(Protocol):
    async def counts(self, endpoint_id: str, task_types: Sequence[str],
                     backlog_types: Sequence[str] = ()) -> QueueCounts: ...


class HealthSource(Protocol):
    """`supabase_sync.runpod_api.RunPodClient` is one."""

    async def health(self, endpoint_id: str) -> dict[str, Any]: ...


class WorkerSettingsApi(Protocol):
    """`supabase_sync.scaler.runpod_management.RunpodManagementClient` is one."""

    async def get_workers(self, endpoint_id: str) -> WorkerLimits: ...

    async def set_workers(self, endpoint_id: str, limits: WorkerLimits) -> WorkerLimits: ...


class DecisionLog(Protocol):
    async def record(self, result: "PassResult") -> None: ...


class SupabaseQueueCounts:
    """`scaler_queue_counts` called as a Supabase RPC (supabase AsyncClient)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def counts(self, endpoint_id: str, task_types: Sequence[str],
                     backlog_types: Sequence[str] = ()) -> QueueCounts:
        response = await self._client.rpc("scaler_queue_counts", {
            "p_endpoint_id": endpoint_id, "p_task_types": list(task_types), "p_backlog_types": list(backlog_types),
        }).execute()
        rows = TypeAdapter(list[QueueCounts]).validate_python(response.data or [])
        return rows[0] if rows else QueueCounts(queued_ready=0, queued_waiting=0, in_progress=0)


class SupabaseDecisionLog:
    """`record_scaler_decision` called as a Supabase RPC: the latest decision per endpoint."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def record(self, result: "PassResult") -> None:
        await self._client.rpc(
            "record_scaler_decision", {"p_endpoint_id": result.endpoint_id, "p_decision": decision_row(result)}
        ).execute()


@dataclass(frozen=True)
class PassResult:
    """What happened to one endpoint in one pass."""

    endpoint_id: str
    outcome: Outcome
    decision: ScalingDecision | None  # None when the endpoint could not be observed
    queue: QueueCounts | None
    error: str | None = None
    applied: WorkerLimits | None = None  # the last setting known to be on RunPod after this pass


@dataclass
class _EndpointState:
    current: WorkerLimits | None = None  # the last setting known to be on RunPod
    lowering_since: float | None = None


def decision_row(result: PassResult) -> dict[str, Any]:
    """The decision as a `scaler_decisions` row (JSON object, counters left to SQL)."""
    row: dict[str, Any] = {"outcome": result.outcome, "error": result.error}
    if result.applied is not None:
        row.update(applied_min=result.applied.min, applied_max=result.applied.max)
    d = result.decision
    if d is None:
        return row
    row.update(
        reason=d.reason,
        queued=d.load.queued,
        queued_in_backoff=result.queue.queued_waiting if result.queue else None,
        in_progress=d.load.in_progress,
        runpod_in_queue=d.load.runpod_in_queue,
        runpod_in_progress=d.load.runpod_in_progress,
        workers_idle=d.load.workers_idle,
        workers_running=d.load.workers_running,
        workload=d.load.workload,
        busy=d.load.busy,
        backlog_queued=result.queue.backlog_queued if result.queue else None,
        backlog_in_progress=d.load.backlog_in_progress,
        desired_min=d.desired.min,
        desired_max=d.desired.max,
        target_min=d.target.min,
        target_max=d.target.max,
        scale_down_pending=d.lowering_since is not None,
    )
    return row


DecisionListener = Callable[[PassResult], None]


class Scaler:
    """Sizes every routed endpoint, one pass at a time."""

    def __init__(
        self,
        endpoints: Sequence[ScaledEndpoint],
        queue: QueueSource,
        health: HealthSource,
        management: WorkerSettingsApi,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
        listeners: Sequence[DecisionListener] = (),
        decision_log: DecisionLog | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self._queue = queue
        self._health = health
        self._management = management
        self.dry_run = dry_run
        self._clock = clock
        self._listeners = list(listeners)
        self._decision_log = decision_log
        self._state = {e.endpoint_id: _EndpointState() for e in self.endpoints}

    def current(self, endpoint_id: str) -> WorkerLimits | None:
        """The last setting known to be on RunPod for this endpoint (None until read or set)."""
        return self._state[endpoint_id].current

    async def run_pass(self) -> list[PassResult]:
        """Observe, decide and (unless dry-run) apply, for every endpoint; never raises for one."""
        results = list(await asyncio.gather(*(self._scale(e) for e in self.endpoints)))
        for result in results:
            self._report(result)
        if self._decision_log is not None and not self.dry_run:
            await asyncio.gather(*(self._record(r) for r in results))
        return results

    async def _record(self, result: PassResult) -> None:
        try:
            await self._decision_log.record(result)  # type: ignore[union-attr]
        except Exception as exc:  # metrics must never stop scaling
            log.warning("endpoint %s: could not record the decision: %s", result.endpoint_id, _describe(exc))

    async def run_forever(self, interval_s: float, stop: asyncio.Event) -> None:
        """A pass every `interval_s` seconds until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.run_pass()
            except Exception:  # a bug in one pass must not stop the scaler for good
                log.exception("scaler pass failed")
            wait = max(0.0, interval_s - (time.monotonic() - started))
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    async def _scale(self, endpoint: ScaledEndpoint) -> PassResult:
        state = self._state[endpoint.endpoint_id]
        try:
            queue, health = await asyncio.gather(
                self._queue.counts(endpoint.endpoint_id, endpoint.task_types, endpoint.backlog_task_types),
                self._health.health(endpoint.endpoint_id),
            )
            health_model = RunpodHealth.model_validate(health)
        except Exception as exc:
            return PassResult(endpoint.endpoint_id, "observe_failed", None, None, _describe(exc), state.current)
        if state.current is None:
            try:
                state.current = await self._management.get_workers(endpoint.endpoint_id)
            except ManagementApiError as exc:
                log.warning("endpoint %s: cannot read its current workers (%s); the target is applied as is",
                            endpoint.endpoint_id, exc)

        load = EndpointLoad(
            queued=queue.queued_ready,
            in_progress=queue.in_progress,
            runpod_in_queue=health_model.jobs.inQueue,
            runpod_in_progress=health_model.jobs.inProgress,
            workers_idle=health_model.workers.idle,
            workers_running=health_model.workers.running,
            backlog_in_progress=queue.backlog_in_progress,
        )
        previous_since = state.lowering_since
        decision = decide(endpoint.endpoint_id, endpoint.rule, load, state.current, previous_since, self._clock())
        state.lowering_since = decision.lowering_since
        if not decision.apply:
            return PassResult(endpoint.endpoint_id, "unchanged", decision, queue, applied=state.current)
        if self.dry_run:
            result = PassResult(endpoint.endpoint_id, "dry_run", decision, queue, applied=state.current)
            state.current = decision.target  # as if applied: later dry-run passes go on from there
            return result
        try:
            state.current = await self._management.set_workers(endpoint.endpoint_id, decision.target)
        except ManagementApiError as exc:
            # Keep the last good setting; a scale-down that was due stays due (no new grace).
            if state.current is not None and decision.desired.lowers(state.current):
                state.lowering_since = previous_since if previous_since is not None else self._clock()
            return PassResult(endpoint.endpoint_id, "apply_failed", decision, queue, str(exc), state.current)
        return PassResult(endpoint.endpoint_id, "applied", decision, queue, applied=state.current)

    def _report(self, result: PassResult) -> None:
        line = describe(result)
        if result.outcome in ("apply_failed", "observe_failed"):
            log.warning("%s", line)
        else:
            log.info("%s", line)
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:  # metrics must never stop scaling
                log.exception("scaler listener failed")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _limits(limits: WorkerLimits | None) -> str:
    if limits is None:
        return "unknown"
    text = f"{limits.min}/{limits.max}"
    return text if limits.idle_timeout_s is None else f"{text} idle={limits.idle_timeout_s}s"


def describe(result: PassResult) -> str:
    """One line: the decision and every input it was made from (limits are min/max)."""
    if result.decision is None:
        return f"endpoint={result.endpoint_id} outcome={result.outcome} error={result.error!r}"
    d, q = result.decision, result.queue
    parts = [
        f"endpoint={d.endpoint_id}",
        f"outcome={result.outcome}",
        f"queued={d.load.queued}",
        f"queued_in_backoff={q.queued_waiting if q else 0}",
        f"in_progress={d.load.in_progress}",
        f"runpod_in_queue={d.load.runpod_in_queue}",
        f"runpod_in_progress={d.load.runpod_in_progress}",
        f"workers_idle={d.load.workers_idle}",
        f"workers_running={d.load.workers_running}",
        f"workload={d.load.workload}",
        f"busy={d.load.busy}",
        f"backlog_queued={q.backlog_queued if q else 0}",
        f"backlog_in_progress={d.load.backlog_in_progress}",
        f"current={_limits(d.current)}",
        f"desired={_limits(d.desired)}",
        f"target={_limits(d.target)}",
        f"reason={d.reason!r}",
    ]
    if result.error:
        parts.append(f"error={result.error!r}")
    return " ".join(parts)
