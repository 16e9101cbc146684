"""A thin client for RunPod's public serverless API: /run, /status, /cancel, /health.

Retries 429 and 5xx (and connection failures) with exponential backoff and full jitter,
honouring Retry-After. /run is retried only when RunPod certainly did not take the job
(429, or the connection could not be opened): a 5xx or a timeout after the request was
sent may have created a job, and submitting again would run the task twice, so that
surfaces as RunPodUnavailable and the caller decides.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

import httpx
from pydantic import BaseModel, ConfigDict

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


class RunPodError(Exception):
    """A RunPod API call did not succeed."""


class RunPodUnavailable(RunPodError):
    """429 or 5xx after the retries, or no connection: try again later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SubmissionStopped(RunPodError):
    """The caller said to stop trying (its claim is gone) before RunPod took the job."""


class RunPodRejected(RunPodError):
    """RunPod refused the request (4xx other than 429): retrying will not help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class JobStatus(BaseModel):
    """RunPod's /status body (and the webhook body, which is the same plus `input`)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    output: Any = None
    error: Any = None
    delayTime: int | None = None  # noqa: N815 (RunPod's field name)
    executionTime: int | None = None  # noqa: N815

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class RetryPolicy(BaseModel):
    """How long to keep trying a call that RunPod answered 429 / 5xx."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(self.max_delay_s, retry_after_s)
        # full jitter: dispatchers that were throttled together do not come back together
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt))


class RunPodClient:
    """One keep-alive connection pool to RunPod's endpoint API."""

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, retry: RetryPolicy | None = None,
                 timeout_s: float = 30.0, max_connections: int = 16,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, endpoint_id: str, job_input: Any, webhook: str | None = None,
                  policy: dict[str, Any] | None = None, keep_trying: Callable[[], bool] | None = None) -> str:
        """Submit a job; returns RunPod's job id. `keep_trying` is asked before every retry:
        False ends the call with SubmissionStopped (no request is cut off half-way)."""
        body: dict[str, Any] = {"input": job_input}
        if webhook:
            body["webhook"] = webhook
        if policy:
            body["policy"] = policy
        response = await self._send("POST", f"/{endpoint_id}/run", json=body, retry_5xx=False,
                                    keep_trying=keep_trying)
        data = response.json()
        if not isinstance(data, dict) or not data.get("id"):
            raise RunPodError(f"/run answered without a job id: {str(data)[:200]}")
        return str(data["id"])

    async def status(self, endpoint_id: str, job_id: str) -> JobStatus | None:
        """The job's status, or None when RunPod no longer knows the job (expired or never existed)."""
        response = await self._send("GET", f"/{endpoint_id}/status/{job_id}", allow_404=True)
        if response.status_code == 404:
            return None
        return JobStatus.model_validate(response.json())

    async def cancel(self, endpoint_id: str, job_id: str) -> JobStatus | None:
        """Cancel the job; None when RunPod no longer knows it."""
        response = await self._send("POST", f"/{endpoint_id}/cancel/{job_id}", allow_404=True)
        if response.status_code == 404:
            return None
        return JobStatus.model_validate(response.json())

    async def health(self, endpoint_id: str) -> dict[str, Any]:
        return (await self._send("GET", f"/{endpoint_id}/health")).json()

    async def _send(self, method: str, path: str, json: Any = None, retry_5xx: bool = True,
                    allow_404: bool = False, keep_trying: Callable[[], bool] | None = None) -> httpx.Response:
        last = ""
        retry_after: float | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                await asyncio.sleep(self.retry.delay(attempt - 1, retry_after))
                if keep_trying is not None and not keep_trying():
                    raise SubmissionStopped(f"{method} {path}: stopped after {attempt} tries ({last})")
            try:
                response = await self._http.request(method, path, json=json)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last, retry_after = f"{method} {path}: cannot connect ({exc.__class__.__name__}: {exc})", None
                continue
            except httpx.TransportError as exc:
                if not retry_5xx:
                    raise RunPodUnavailable(f"{method} {path}: {exc.__class__.__name__} after sending: {exc}") from None
                last, retry_after = f"{method} {path}: {exc.__class__.__name__}: {exc}", None
                continue
            code = response.status_code
            if code < 400 or (allow_404 and code == 404):
                return response
            text = response.text[:300]
            retry_after = _retry_after(response)
            if code == 429 or (code >= 500 and retry_5xx):
                last = f"{method} {path}: HTTP {code} {text}"
                continue
            if code >= 500:
                raise RunPodUnavailable(f"{method} {path}: HTTP {code} {text}", retry_after)
            raise RunPodRejected(f"{method} {path}: HTTP {code} {text}", code)
        raise RunPodUnavailable(f"{last} (gave up after {self.retry.attempts} tries)", retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
