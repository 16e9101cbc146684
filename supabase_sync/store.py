"""The task store: each method is one SQL function called as a Supabase RPC.

No table is read or written here directly; the state machine lives in
sql/migrations/0002_functions.sql. Write-backs return an outcome ('applied', 'stale',
'not_found', or the new status) instead of raising, because a stale write-back is a
normal event (a late webhook, a second dispatcher), not an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import httpx
from pydantic import BaseModel, TypeAdapter
from supabase import AsyncClient, AsyncClientOptions, acreate_client

WriteOutcome = Literal["applied", "stale", "not_found"]


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
    outcome: str


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
                          max_in_flight: int | None, lease_s: float) -> list[ClaimedTask]:
        rows = await self._rpc("claim_tasks", {
            "p_dispatcher": dispatcher, "p_endpoint_id": endpoint_id, "p_task_types": task_types,
            "p_limit": limit, "p_max_in_flight": max_in_flight, "p_lease_s": lease_s,
        })
        return _list(ClaimedTask, rows)

    async def attach_runpod_jobs(self, jobs: list[tuple[UUID, UUID, str]], recheck_s: float) -> list[AttachOutcome]:
        payload = [{"task_id": str(t), "lease_token": str(lease), "runpod_job_id": job} for t, lease, job in jobs]
        rows = await self._rpc("attach_runpod_jobs", {"p_jobs": payload, "p_recheck_s": recheck_s})
        return _list(AttachOutcome, rows)

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

    async def requeue_expired_leases(self, limit: int = 1000) -> list[RequeueOutcome]:
        return _list(RequeueOutcome, await self._rpc("requeue_expired_leases", {"p_limit": limit}))

    async def take_due_polls(self, dispatcher: str, limit: int, recheck_s: float) -> list[DuePoll]:
        rows = await self._rpc("take_due_polls", {"p_dispatcher": dispatcher, "p_limit": limit, "p_recheck_s": recheck_s})
        return _list(DuePoll, rows)

    async def cancel_task(self, task_id: UUID, reason: str = "cancelled") -> str:
        return await self._rpc("cancel_task", {"p_task_id": str(task_id), "p_reason": reason})

    async def take_pending_cancels(self, limit: int, retry_s: float) -> list[PendingCancel]:
        return _list(PendingCancel, await self._rpc("take_pending_cancels", {"p_limit": limit, "p_retry_s": retry_s}))

    async def mark_runpod_cancelled(self, task_id: UUID) -> WriteOutcome:
        return await self._rpc("mark_runpod_cancelled", {"p_task_id": str(task_id)})

    async def fail_unroutable(self, known_types: list[str], limit: int = 100) -> list[UnroutedTask]:
        return _list(UnroutedTask, await self._rpc("fail_unroutable", {"p_known_types": known_types, "p_limit": limit}))

    async def heartbeat(self, worker_id: str, status: str = "active", current_task_id: UUID | str | None = None,
                        metadata: dict[str, Any] | None = None) -> Any:
        return await self._rpc("heartbeat", {
            "p_worker_id": worker_id, "p_status": status,
            "p_current_task_id": str(current_task_id) if current_task_id else None, "p_metadata": metadata,
        })

    async def queue_stats(self) -> list[QueueStat]:
        return _list(QueueStat, await self._rpc("queue_stats", {}))

    # --- pipelines and templates (0080, 0081) ---------------------------------------------

    async def dependency_outputs(self, refs: list[tuple[UUID, UUID]]) -> list[DependencyOutput]:
        """For (task, referenced task) pairs: declared?, the dependency's status and outputs."""
        payload = [{"task_id": str(task), "from_task": str(dep)} for task, dep in refs]
        return _list(DependencyOutput, await self._rpc("dependency_outputs", {"p_refs": payload}))

    async def get_workflow_templates(self, refs: list[str]) -> list[TemplateRow]:
        """Template rows for 'name@version' (that one) or 'name' (the newest) references."""
        return _list(TemplateRow, await self._rpc("get_workflow_templates", {"p_refs": refs}))

    async def list_workflow_templates(self) -> list[TemplateRow]:
        return _list(TemplateRow, await self._rpc("list_workflow_templates", {}))

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


def _list(model: type[BaseModel], rows: Any) -> list[Any]:
    return TypeAdapter(list[model]).validate_python(rows or [])
