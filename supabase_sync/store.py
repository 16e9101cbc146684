"""The task store: each method is one SQL function called as a Supabase RPC.

No table is read or written here directly; the state machine lives in
sql/migrations/ (0002_functions.sql, 0090_dispatcher_hardening.sql). Write-backs return an
outcome ('applied', 'stale', 'not_found', or the new status) instead of raising, because a
stale write-back is a normal event (a late webhook, a second dispatcher), not an error.

Rows are validated one by one: a row that does not fit its model never spoils the others;
it is kept apart in the answer's `malformed` list, so the caller can quarantine it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel, ValidationError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

log = logging.getLogger("supabase_sync.store")

WriteOutcome = Literal["applied", "stale", "not_found"]
Row = TypeVar("Row", bound=BaseModel)


@dataclass(frozen=True)
class MalformedRow:
    """A row a SQL function returned that does not fit its model."""

    function: str
    task_id: UUID | None  # when the row names a readable task id
    problem: str


class Rows(list, Generic[Row]):
    """The rows that validated, in order; `malformed` holds the others."""

    def __init__(self, valid: list[Row], malformed: list[MalformedRow]) -> None:
        super().__init__(valid)
        self.malformed = malformed


class ClaimedTask(BaseModel):
    """A task this dispatcher now holds (until its lease expires or it writes back)."""

    task_id: UUID
    task_type: str
    params: Any
    attempts: int
    max_attempts: int
    lease_token: UUID
    created_at: datetime


class AttachOutcome(BaseModel):
    task_id: UUID
    outcome: WriteOutcome


class DuePoll(BaseModel):
    """An in-flight task whose RunPod /status should be checked now."""

    task_id: UUID
    task_type: str
    lease_token: UUID
    endpoint_id: str
    runpod_job_id: str
    attempts: int
    max_attempts: int


class PendingCancel(BaseModel):
    task_id: UUID
    endpoint_id: str | None
    runpod_job_id: str


class QueueStat(BaseModel):
    task_type: str
    status: str
    tasks: int
    oldest_created_at: datetime | None


class RequeueOutcome(BaseModel):
    task_id: UUID
    outcome: str  # 'queued' or 'failed' (too many lost claims)
    claimed_by: str | None = None


class LeaseOutcome(BaseModel):
    task_id: UUID
    outcome: Literal["extended", "has_job", "stale", "not_found"]
    status: str | None  # the task's status now (None: not found)


class QuarantinedTask(BaseModel):
    """A row no dispatcher could handle, now failed with its problem."""

    task_id: UUID
    problem: str
    endpoint_id: str | None
    runpod_job_id: str | None


class UnroutedTask(BaseModel):
    task_id: UUID
    task_type: str


class DependencyOutput(BaseModel):
    """A dependency of a task and what it produced (dependency_outputs, 0080_pipelines.sql)."""

    task_id: UUID
    from_task: UUID
    declared: bool
    status: str | None
    output_url: str | None
    outputs: list[dict[str, Any]]


class TemplateRow(BaseModel):
    """One row of workflow_templates (0081_workflow_templates.sql), as get_workflow_templates returns it."""

    ref: str | None = None
    name: str
    version: int
    description: str = ""
    workflow: Any = None
    parameters: Any = None
    created_at: datetime | None = None


class TaskStore:
    """Typed access to the queue's SQL functions through one supabase AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    @classmethod
    async def connect(cls, url: str, service_role_key: str, max_connections: int = 20) -> "TaskStore":
        # One keep-alive pool for every RPC; the default client opens a new one per request.
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        client = await acreate_client(url, service_role_key, options=AsyncClientOptions(httpx_client=http))
        store = cls(client)
        store._http = http
        return store

    async def aclose(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            await http.aclose()

    async def _rpc(self, fn: str, params: dict[str, Any]) -> Any:
        response = await self.client.rpc(fn, params).execute()
        return response.data

    async def claim_tasks(self, dispatcher: str, endpoint_id: str, task_types: list[str], limit: int,
                          max_in_flight: int | None, lease_s: float) -> Rows[ClaimedTask]:
        rows = await self._rpc("claim_tasks", {
            "p_dispatcher": dispatcher, "p_endpoint_id": endpoint_id, "p_task_types": task_types,
            "p_limit": limit, "p_max_in_flight": max_in_flight, "p_lease_s": lease_s,
        })
        return _rows(ClaimedTask, rows, "claim_tasks")

    async def attach_runpod_jobs(self, jobs: list[tuple[UUID, UUID, str]], recheck_s: float) -> Rows[AttachOutcome]:
        payload = [{"task_id": str(t), "lease_token": str(lease), "runpod_job_id": job} for t, lease, job in jobs]
        rows = await self._rpc("attach_runpod_jobs", {"p_jobs": payload, "p_recheck_s": recheck_s})
        return _rows(AttachOutcome, rows, "attach_runpod_jobs")

    async def record_progress(self, task_id: UUID, lease_token: UUID, progress: Any) -> WriteOutcome:
        return await self._rpc("record_progress", {
            "p_task_id": str(task_id), "p_lease_token": str(lease_token), "p_progress": progress,
        })

    async def complete_task(self, task_id: UUID, lease_token: UUID, runpod_job_id: str | None,
                            output_url: str | None, result: Any) -> WriteOutcome:
        return await self._rpc("complete_task", {
            "p_task_id": str(task_id), "p_lease_token": str(lease_token), "p_runpod_job_id": runpod_job_id,
            "p_output_url": output_url, "p_result": result,
        })

    async def fail_task(self, task_id: UUID, lease_token: UUID, runpod_job_id: str | None, error: str,
                        retryable: bool, backoff_base_s: float, backoff_max_s: float) -> str:
        """Returns 'queued' (will be retried), 'failed', 'stale' or 'not_found'."""
        return await self._rpc("fail_task", {
            "p_task_id": str(task_id), "p_lease_token": str(lease_token), "p_runpod_job_id": runpod_job_id,
            "p_error": error, "p_retryable": retryable,
            "p_backoff_base_s": backoff_base_s, "p_backoff_max_s": backoff_max_s,
        })

    async def release_task(self, task_id: UUID, lease_token: UUID, delay_s: float, reason: str) -> WriteOutcome:
        return await self._rpc("release_task", {
            "p_task_id": str(task_id), "p_lease_token": str(lease_token), "p_delay_s": delay_s, "p_reason": reason,
        })

    async def extend_leases(self, leases: list[tuple[UUID, UUID]], lease_s: float) -> Rows[LeaseOutcome]:
        payload = [{"task_id": str(t), "lease_token": str(lease)} for t, lease in leases]
        rows = await self._rpc("extend_leases", {"p_leases": payload, "p_lease_s": lease_s})
        return _rows(LeaseOutcome, rows, "extend_leases")

    async def requeue_lost_claims(self, limit: int = 1000) -> Rows[RequeueOutcome]:
        return _rows(RequeueOutcome, await self._rpc("requeue_lost_claims", {"p_limit": limit}), "requeue_lost_claims")

    async def take_due_polls(self, dispatcher: str, limit: int, recheck_s: float) -> Rows[DuePoll]:
        rows = await self._rpc("take_due_polls", {"p_dispatcher": dispatcher, "p_limit": limit, "p_recheck_s": recheck_s})
        return _rows(DuePoll, rows, "take_due_polls")

    async def quarantine_malformed_tasks(self, limit: int = 100) -> Rows[QuarantinedTask]:
        rows = await self._rpc("quarantine_malformed_tasks", {"p_limit": limit})
        return _rows(QuarantinedTask, rows, "quarantine_malformed_tasks")

    async def quarantine_task(self, task_id: UUID, problem: str) -> str:
        """Returns 'applied', 'already_final' or 'not_found'."""
        return await self._rpc("quarantine_task", {"p_task_id": str(task_id), "p_problem": problem})

    async def cancel_task(self, task_id: UUID, reason: str = "cancelled") -> str:
        return await self._rpc("cancel_task", {"p_task_id": str(task_id), "p_reason": reason})

    async def take_pending_cancels(self, limit: int, retry_s: float) -> Rows[PendingCancel]:
        rows = await self._rpc("take_pending_cancels", {"p_limit": limit, "p_retry_s": retry_s})
        return _rows(PendingCancel, rows, "take_pending_cancels")

    async def mark_runpod_cancelled(self, task_id: UUID) -> WriteOutcome:
        return await self._rpc("mark_runpod_cancelled", {"p_task_id": str(task_id)})

    async def fail_unroutable(self, known_types: list[str], limit: int = 100) -> Rows[UnroutedTask]:
        rows = await self._rpc("fail_unroutable", {"p_known_types": known_types, "p_limit": limit})
        return _rows(UnroutedTask, rows, "fail_unroutable")

    async def heartbeat(self, worker_id: str, status: str = "active", current_task_id: UUID | str | None = None,
                        metadata: dict[str, Any] | None = None) -> Any:
        return await self._rpc("heartbeat", {
            "p_worker_id": worker_id, "p_status": status,
            "p_current_task_id": str(current_task_id) if current_task_id else None, "p_metadata": metadata,
        })

    async def queue_stats(self) -> Rows[QueueStat]:
        return _rows(QueueStat, await self._rpc("queue_stats", {}), "queue_stats")

    # --- pipelines and templates (0080, 0081) ---------------------------------------------

    async def dependency_outputs(self, refs: list[tuple[UUID, UUID]]) -> Rows[DependencyOutput]:
        """For (task, referenced task) pairs: declared?, the dependency's status and outputs."""
        payload = [{"task_id": str(task), "from_task": str(dep)} for task, dep in refs]
        return _rows(DependencyOutput, await self._rpc("dependency_outputs", {"p_refs": payload}), "dependency_outputs")

    async def get_workflow_templates(self, refs: list[str]) -> Rows[TemplateRow]:
        """Template rows for 'name@version' (that one) or 'name' (the newest) references."""
        return _rows(TemplateRow, await self._rpc("get_workflow_templates", {"p_refs": refs}), "get_workflow_templates")

    async def list_workflow_templates(self) -> Rows[TemplateRow]:
        return _rows(TemplateRow, await self._rpc("list_workflow_templates", {}), "list_workflow_templates")

    async def publish_workflow_template(self, name: str, version: int, workflow: Any, parameters: Any,
                                        description: str) -> str:
        """Returns 'published' or 'unchanged'; a different template under that name@version raises."""
        return await self._rpc("publish_workflow_template", {
            "p_name": name, "p_version": version, "p_workflow": workflow, "p_parameters": parameters,
            "p_description": description,
        })

    async def record_resolved_templates(self, items: list[tuple[UUID, UUID, str]]) -> int:
        payload = [{"task_id": str(t), "lease_token": str(lease), "template": ref} for t, lease, ref in items]
        return await self._rpc("record_resolved_templates", {"p_items": payload})


def _rows(model: type[Row], rows: Any, function: str) -> Rows[Row]:
    """Validate each row on its own; the ones that do not fit are returned apart, named."""
    if rows is None:
        rows = []
    if not isinstance(rows, list):
        raise TypeError(f"{function} answered {type(rows).__name__}, not a list of rows")
    valid: list[Row] = []
    malformed: list[MalformedRow] = []
    for row in rows:
        try:
            valid.append(model.model_validate(row))
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg']}"
                                for err in exc.errors(include_url=False))
            malformed.append(MalformedRow(function, _task_id_of(row), problem))
            log.error("%s returned a malformed row (%s): %s", function, problem, str(row)[:300])
    return Rows(valid, malformed)


def _task_id_of(row: Any) -> UUID | None:
    try:
        return UUID(str(row["task_id"]))
    except (TypeError, KeyError, ValueError):
        return None
