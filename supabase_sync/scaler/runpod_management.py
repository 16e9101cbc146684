"""RunPod's management API, the part the scaler needs: read and set an endpoint's workers.

REST v2 (`https://api.runpod.io`, header `Authorization: Bearer <RUNPOD_API_KEY>`):

- `GET   /v2/serverless/{id}` -> the endpoint, with `workers: {min, max, idleTimeout}`
- `PATCH /v2/serverless/{id}` `{"workers": {"min", "max"[, "idleTimeout"]}}`; only the
  fields sent change.

429 and 5xx answers and transport errors are retried a few times with exponential
backoff (honouring `Retry-After`), then raised as `ManagementApiError`: the caller keeps
the last good setting and tries again on its next pass.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supabase_sync.scaler.rule import WorkerLimits

DEFAULT_MANAGEMENT_URL = "https://api.runpod.io"


class ManagementApiError(Exception):
    """A management call that failed for good (after retries, or not retryable)."""

    def __init__(self, message: str, *, endpoint_id: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.endpoint_id = endpoint_id
        self.status_code = status_code


class EndpointWorkers(BaseModel):
    """The `workers` object of a serverless endpoint as the API reports it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    min: int = Field(ge=0)
    max: int = Field(ge=0)
    idle_timeout_s: int | None = Field(None, alias="idleTimeout")

    def limits(self) -> WorkerLimits:
        return WorkerLimits(min=self.min, max=self.max, idle_timeout_s=self.idle_timeout_s)


class _EndpointBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    workers: EndpointWorkers


class RunpodManagementClient:
    """A thin, retrying async client for an endpoint's worker limits."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_MANAGEMENT_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 15.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("RUNPOD_API_KEY is empty: the management API needs an API key")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self._base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0), transport=transport)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **kwargs: Any) -> "RunpodManagementClient":
        """`RUNPOD_API_KEY` (required) and `RUNPOD_MANAGEMENT_URL` (default api.runpod.io)."""
        env = os.environ if environ is None else environ
        api_key = env.get("RUNPOD_API_KEY", "")
        if not api_key:
            raise ValueError("RUNPOD_API_KEY is not set: the scaler needs it to change endpoints")
        return cls(api_key, base_url=env.get("RUNPOD_MANAGEMENT_URL") or DEFAULT_MANAGEMENT_URL, **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_workers(self, endpoint_id: str) -> WorkerLimits:
        """The endpoint's current `workers.min`/`max`/`idleTimeout`."""
        return self._workers_of(endpoint_id, await self._request("GET", endpoint_id))

    async def set_workers(self, endpoint_id: str, limits: WorkerLimits) -> WorkerLimits:
        """Set `workers.min`/`max` (and `idleTimeout` when given); returns what the API reports."""
        workers: dict[str, int] = {"min": limits.min, "max": limits.max}
        if limits.idle_timeout_s is not None:
            workers["idleTimeout"] = limits.idle_timeout_s
        body = await self._request("PATCH", endpoint_id, json={"workers": workers})
        try:
            return self._workers_of(endpoint_id, body)
        except ManagementApiError:
            # The update succeeded but its answer did not carry the workers: what was sent holds.
            return limits

    @staticmethod
    def _workers_of(endpoint_id: str, body: Any) -> WorkerLimits:
        try:
            return _EndpointBody.model_validate(body).workers.limits()
        except ValidationError as exc:
            raise ManagementApiError(
                f"endpoint {endpoint_id}: unexpected answer, no valid workers object: {exc}", endpoint_id=endpoint_id
            ) from exc

    async def _request(self, method: str, endpoint_id: str, json: dict[str, Any] | None = None) -> Any:
        url = f"{self._base_url}/v2/serverless/{endpoint_id}"
        last_error = ""
        status: int | None = None
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._http.request(method, url, headers=self._headers, json=json)
            except httpx.TransportError as exc:
                status, last_error = None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        return None
                last_error = f"HTTP {status}: {response.text[:300]}"
                if status != 429 and status < 500:
                    raise ManagementApiError(
                        f"{method} endpoint {endpoint_id} refused: {last_error}",
                        endpoint_id=endpoint_id,
                        status_code=status,
                    )
                retry_after = _retry_after_s(response)
            if attempt < self._attempts:
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                delay = delay * (0.5 + random.random() / 2)  # jitter: several scalers do not retry in step
                if retry_after is not None:
                    delay = min(self._max_backoff_s, max(delay, retry_after))
                await self._sleep(delay)
        raise ManagementApiError(
            f"{method} endpoint {endpoint_id} failed after {self._attempts} attempts: {last_error}",
            endpoint_id=endpoint_id,
            status_code=status,
        )


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
