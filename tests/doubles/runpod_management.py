"""A test double of RunPod's management API for serverless endpoints (REST v2, the worker settings).

    GET   /v2/serverless/{id}   -> {"id", "name", "workers": {"min", "max", "idleTimeout"}, "scaling": {...}}
    PATCH /v2/serverless/{id}   {"workers": {"min"?, "max"?, "idleTimeout"?}, "scaling"?: {...}}
                                -> the endpoint after the change (only the fields sent change)

Header `Authorization: Bearer <api key>` (401 without it, 403 with another key); 404 for an
endpoint it does not know; 400 for a body RunPod would refuse (negative or non-integer
values, min above max). It records every accepted PATCH (`changes`) and reports the
settings back; `fail_next` injects 429s (with Retry-After) or 5xx answers.

The routing is framework-free (`ManagementApi.handle`), so the RunPod emulator can mount
it beside its public endpoint API; `ManagementServer` serves it alone on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/v2/serverless/(?P<endpoint_id>[A-Za-z0-9_-]+)/?$")


@dataclass
class RecordedChange:
    """One accepted PATCH: the endpoint, the body sent and the workers after it."""

    endpoint_id: str
    body: dict[str, Any]
    workers: dict[str, int]


@dataclass
class _Fault:
    status: int
    retry_after: float | None


@dataclass
class ManagementApi:
    """The endpoints' settings and the routes over them."""

    api_key: str = "test-runpod-key"
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    changes: list[RecordedChange] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, endpoint id), every one seen
    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_endpoint(self, endpoint_id: str, workers_min: int = 0, workers_max: int = 3, idle_timeout_s: int = 5) -> None:
        """An endpoint with RunPod's defaults (min 0, max 3, idle timeout 5 s) unless told otherwise."""
        with self._lock:
            self.endpoints[endpoint_id] = {
                "id": endpoint_id,
                "name": f"endpoint {endpoint_id}",
                "workers": {"min": workers_min, "max": workers_max, "idleTimeout": idle_timeout_s},
                "scaling": {"type": "QUEUE_DELAY", "value": 4},
                "timeout": 600000,
                "flashboot": "FLASHBOOT",
            }

    def workers(self, endpoint_id: str) -> dict[str, int]:
        """The endpoint's current workers object (a copy)."""
        with self._lock:
            return dict(self.endpoints[endpoint_id]["workers"])

    def fail_next(self, count: int = 1, status: int = 429, retry_after: float | None = None) -> None:
        """Answer the next `count` requests with `status` (429: with Retry-After when given)."""
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(count))

    def patches(self, endpoint_id: str | None = None) -> list[RecordedChange]:
        with self._lock:
            return [c for c in self.changes if endpoint_id is None or c.endpoint_id == endpoint_id]

    # --- the routes -----------------------------------------------------------------------

    def matches(self, path: str) -> bool:
        """Whether `path` (without the query string) is one of these routes."""
        return _PATH.match(path) is not None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        """Answer one request: (status, extra headers, JSON body)."""
        match = _PATH.match(path)
        if match is None:
            return 404, {}, {"error": "not found"}
        endpoint_id = match["endpoint_id"]
        lowered = {k.lower(): v for k, v in headers.items()}
        auth = lowered.get("authorization", "")
        if not auth.startswith("Bearer "):
            return 401, {}, {"error": "missing bearer API key"}
        if auth.removeprefix("Bearer ") != self.api_key:
            return 403, {}, {"error": "API key refused"}
        with self._lock:
            self.requests.append((method, endpoint_id))
            if self._faults:
                fault = self._faults.pop(0)
                extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                return fault.status, extra, {"error": f"injected {fault.status}"}
            endpoint = self.endpoints.get(endpoint_id)
            if endpoint is None:
                return 404, {}, {"error": f"endpoint {endpoint_id} not found"}
            if method == "GET":
                return 200, {}, copy.deepcopy(endpoint)
            if method != "PATCH":
                return 405, {}, {"error": f"{method} not allowed"}
            try:
                update = json.loads(body or b"{}")
            except ValueError:
                return 400, {}, {"error": "body is not JSON"}
            problem = _check_update(update, endpoint["workers"])
            if problem:
                return 400, {}, {"error": problem}
            endpoint["workers"].update(update.get("workers", {}))
            if "scaling" in update:
                endpoint["scaling"].update(update["scaling"])
            self.changes.append(RecordedChange(endpoint_id, update, dict(endpoint["workers"])))
            return 200, {}, copy.deepcopy(endpoint)


def _check_update(update: Any, current: dict[str, int]) -> str | None:
    if not isinstance(update, dict):
        return "body must be a JSON object"
    workers = update.get("workers", {})
    if not isinstance(workers, dict):
        return "workers must be an object"
    for key, value in workers.items():
        if key not in ("min", "max", "idleTimeout"):
            return f"workers.{key} is not a field"
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"workers.{key} must be a non-negative integer, got {value!r}"
    merged = {**current, **workers}
    if merged["min"] > merged["max"]:
        return f"workers.min ({merged['min']}) is above workers.max ({merged['max']})"
    return None


class ManagementServer:
    """`ManagementApi` alone on 127.0.0.1 (base URL for `RUNPOD_MANAGEMENT_URL`)."""

    def __init__(self, api: ManagementApi, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api = api
        owner = api

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                status, extra, payload = owner.handle(self.command, path, dict(self.headers.items()), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="runpod-management", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ManagementServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- mounted into the RunPod emulator -------------------------------------------------------


def starlette_routes(api: ManagementApi) -> list[Any]:
    """The management routes as Starlette routes, for `RunPodEmulator.extra_routes()`."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def serve(request: Request) -> JSONResponse:
        status, extra, payload = api.handle(
            request.method, request.url.path, dict(request.headers.items()), await request.body()
        )
        return JSONResponse(payload, status_code=status, headers=extra)

    return [Route("/v2/serverless/{endpoint_id}", serve, methods=["GET", "PATCH"])]


def emulator_with_management(api: ManagementApi, **kwargs: Any) -> Any:
    """A `RunPodEmulator` that also serves RunPod's management API for its endpoints.

    Its `url` is the management base URL (RUNPOD_MANAGEMENT_URL) and its `api_base_url`
    the endpoint API's (RUNPOD_API_BASE_URL); both take the same API key.
    """
    from tests.doubles.runpod_emulator import RunPodEmulator

    class RunPodEmulatorWithManagement(RunPodEmulator):
        def extra_routes(self) -> list[Any]:
            return starlette_routes(api)

    return RunPodEmulatorWithManagement(api_key=api.api_key, **kwargs)
