"""The dispatcher's HTTP side: wake-up hook, RunPod completion hook, health, metrics.

    POST /hooks/supabase   the Database Webhook on INSERT (header X-Dispatcher-Secret or
                           Authorization: Bearer <TRIGGER_SECRET>) -> wakes the loop
    POST /hooks/runpod     RunPod's webhook; ?task_id&lease&sig (HMAC, see webhooks.py)
                           401 bad signature, 404 unknown task, 200 otherwise (also for a
                           stale result, which changes nothing: RunPod must not retry it)
    GET  /health           200 {"status": "ok"} while dispatch rounds succeed, else 503; says
                           whether the LISTEN wake-up is connected
    GET  /metrics          Prometheus text
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from supabase_sync.dispatcher import Dispatcher
from supabase_sync.runpod_api import JobStatus
from supabase_sync.scaler.metrics import scaler_metrics_text
from supabase_sync.webhooks import RUNPOD_HOOK_PATH, verify

if TYPE_CHECKING:
    from supabase_sync.listener import TaskListener

log = logging.getLogger("supabase_sync.webapp")


class TriggerPayload(BaseModel):
    """What the pg_net triggers (or a Supabase Database Webhook) post: `type` says what to wake."""

    model_config = ConfigDict(extra="allow")

    type: str | None = None
    task_id: str | None = None
    task_type: str | None = None


def create_app(dispatcher: Dispatcher, listener: "TaskListener | None" = None) -> Starlette:
    """The web app bound to one dispatcher (and its LISTEN wake-up, when DATABASE_URL is set)."""
    settings = dispatcher.settings

    async def supabase_hook(request: Request) -> Response:
        if not settings.trigger_secret:
            return JSONResponse({"error": "the trigger hook is disabled (TRIGGER_SECRET is not set)"}, status_code=404)
        given = request.headers.get("x-dispatcher-secret") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), settings.trigger_secret.encode()):
            return JSONResponse({"error": "bad or missing X-Dispatcher-Secret"}, status_code=401)
        try:
            payload = TriggerPayload.model_validate_json(await request.body() or b"{}")
        except ValidationError:
            payload = TriggerPayload()
        log.debug("woken by %s for task %s", payload.type, payload.task_id)
        kind = (payload.type or "").upper()
        if kind != "CANCEL":
            dispatcher.wake()  # INSERT, or a body this hook does not know: a round
        if kind != "INSERT":
            dispatcher.wake_cancels()  # a cancelled task's RunPod job (0092), or a body this hook does not know
        return JSONResponse({"woken": True})

    async def runpod_hook(request: Request) -> Response:
        if not settings.webhook_secret:
            return JSONResponse({"error": "webhooks are disabled (WEBHOOK_SECRET is not set)"}, status_code=404)
        query = request.query_params
        task_id, lease, sig = query.get("task_id", ""), query.get("lease", ""), query.get("sig", "")
        if not verify(settings.webhook_secret, task_id, lease, sig):
            dispatcher.metrics.outcome("webhook_bad_signature")
            return JSONResponse({"error": "bad webhook signature"}, status_code=401)
        try:
            task_uuid, lease_uuid = UUID(task_id), UUID(lease)
        except ValueError:
            return JSONResponse({"error": "task_id and lease must be UUIDs"}, status_code=400)
        try:
            status = JobStatus.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": f"webhook body is not a RunPod job status: {exc.errors()[0]['msg']}"},
                                status_code=400)
        outcome = await dispatcher.apply_status(task_uuid, lease_uuid, status, status.id)
        if outcome == "not_found":
            return JSONResponse({"error": f"no task {task_id}"}, status_code=404)
        return JSONResponse({"task_id": task_id, "outcome": outcome})

    async def health(request: Request) -> Response:
        last = dispatcher.last_round_ok
        limit = max(60.0, settings.poll_interval_s * 6)
        if last is None or time.monotonic() - last > limit:
            return JSONResponse({"status": "unhealthy", "reason": "no successful dispatch round recently",
                                 "dispatcher_id": settings.dispatcher_id}, status_code=503)
        # A LISTEN connection that is down does not make the dispatcher unhealthy: the poll goes on.
        wakeup: dict[str, Any] = {"listen": listener is not None}
        if listener is not None:
            wakeup.update(connected=listener.connected, connections=listener.connections,
                          notifications=listener.notifications, notify_queue_usage=listener.queue_usage)
        return JSONResponse({"status": "ok", "dispatcher_id": settings.dispatcher_id,
                             "last_round_s_ago": round(time.monotonic() - last, 3), "wakeup": wakeup})

    async def metrics(request: Request) -> Response:
        queue: Any = None
        up = True
        try:
            queue = await dispatcher.store.queue_stats()
        except Exception as exc:  # still serve the process counters
            log.warning("queue_stats failed: %s", exc)
            up = False
        text = dispatcher.metrics.render(queue, up, settings.routing.task_types)
        # scaler (issue 6): the scaler's latest decision per endpoint (supabase_sync/scaler/metrics.py)
        try:
            text += await scaler_metrics_text(dispatcher.store.client)
        except Exception as exc:
            log.warning("scaler_decisions failed: %s", exc)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return Starlette(routes=[
        Route("/hooks/supabase", supabase_hook, methods=["POST"]),
        Route(RUNPOD_HOOK_PATH, runpod_hook, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
