"""ComfyUI's HTTP API, through one keep-alive httpx client.

Every call waits at most REQUEST_TIMEOUT_S for an answer, and less when the job's deadline
comes first (`bounded`: the client as one job sees it). A call that gets no answer in its time raises
ComfyUnresponsive (ComfyUI is hung), or the job's JobTimeout when it was the deadline that
cut the wait short; the caller then checks ComfyUI with a short probe (PROBE_TIMEOUT_S).

Request and response shapes: ../shared/notes/comfyui.md (ComfyUI 0.3.75).
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import httpx

from comfy.deadline import Deadline
from comfy.errors import ComfyUnavailable, ComfyUnresponsive, PromptRejected

REQUEST_TIMEOUT_S = 30.0  # the longest any call waits for ComfyUI (/object_info of a big install takes seconds)
PROBE_TIMEOUT_S = 5.0  # a healthy ComfyUI answers /queue and /interrupt in milliseconds; silence this long: hung
CONNECT_TIMEOUT_S = 5.0


class ComfyClient:
    """A client for one ComfyUI server. Thread-safe (httpx.Client is)."""

    def __init__(self, base_url: str, timeout_s: float = REQUEST_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_keepalive_connections=4, keepalive_expiry=300),
            transport=transport,
        )
        self._object_info = _ObjectInfoCache()
        self._deadline: Deadline | None = None

    def bounded(self, deadline: Deadline) -> "ComfyClient":
        """This client as one job uses it: the same connections and /object_info cache, and
        every call (from any of the job's threads) waits no longer than `deadline` allows.

        One per job, so pipelined jobs each keep their own deadline. Calls made with
        `within_deadline=False` (stopping a prompt, clean-up) keep their own timeout.
        """
        view = copy.copy(self)
        view._deadline = deadline
        return view

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/ws"

    def close(self) -> None:
        self._http.close()

    def _timeout(self, what: str, timeout_s: float | None, within_deadline: bool) -> tuple[float, Deadline | None]:
        """The wait for one call, and the deadline if that is what limits it."""
        limit = self._timeout_s if timeout_s is None else timeout_s
        deadline = self._deadline if within_deadline else None
        if deadline is None:
            return limit, None
        remaining = deadline.remaining()
        if remaining <= 0:
            raise deadline.exceeded(f"waiting for ComfyUI to answer {what}")
        return (remaining, deadline) if remaining < limit else (limit, None)

    def _request(self, method: str, path: str, *, timeout_s: float | None = None, within_deadline: bool = True,
                 **kwargs: Any) -> httpx.Response:
        what = f"{method} {path}"
        limit, deadline = self._timeout(what, timeout_s, within_deadline)
        try:
            return self._http.request(method, path, timeout=httpx.Timeout(limit, connect=min(CONNECT_TIMEOUT_S, limit)),
                                      **kwargs)
        except httpx.TimeoutException as exc:
            raise self._no_answer(what, limit, deadline) from exc
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {what}: {exc}") from exc

    def _no_answer(self, what: str, limit: float, deadline: Deadline | None) -> Exception:
        if deadline is not None:
            return deadline.exceeded(f"waiting for ComfyUI to answer {what}")
        return ComfyUnresponsive(
            f"ComfyUI at {self.base_url} stopped answering: no answer to {what} within {limit:g} s",
            details={"request": what, "waited_s": limit},
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyUnavailable(
                f"ComfyUI answered {response.status_code} to {method} {path}: {response.text[:500]}"
            )
        return response.json()

    # -- read ---------------------------------------------------------------------------

    def system_stats(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._json("GET", "/system_stats", timeout_s=timeout_s)

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """Every node class ComfyUI knows, cached for the life of the process."""
        cache = self._object_info
        with cache.lock:
            if cache.value is None or refresh:
                cache.value = self._json("GET", "/object_info")
            return cache.value

    def cached_object_info(self) -> dict[str, Any] | None:
        """The cached /object_info, without asking ComfyUI (None when there is none)."""
        return self._object_info.value

    def forget_object_info(self) -> None:
        """Drop the cache: a restarted ComfyUI may have loaded other custom nodes."""
        with self._object_info.lock:
            self._object_info.value = None

    def history(self, prompt_id: str, timeout_s: float | None = None, within_deadline: bool = True) -> dict[str, Any] | None:
        """The history entry of a prompt, or None while it has none."""
        entries = self._json("GET", f"/history/{prompt_id}", timeout_s=timeout_s, within_deadline=within_deadline)
        return entries.get(prompt_id) if isinstance(entries, dict) else None

    def queue(self, timeout_s: float | None = None, within_deadline: bool = True) -> dict[str, Any]:
        return self._json("GET", "/queue", timeout_s=timeout_s, within_deadline=within_deadline)

    def probe(self, within_deadline: bool = True) -> None:
        """Check that ComfyUI answers, within PROBE_TIMEOUT_S (ComfyUnresponsive, ComfyUnavailable).

        Asks GET /prompt (how many prompts it holds), its cheapest answer: ~1 ms, where /system_stats
        reads requirements.txt and package metadata on every call (5-8 ms, and file I/O that stalls
        on a busy disk) and /queue lists every queued workflow of an attached ComfyUI.
        """
        self._json("GET", "/prompt", timeout_s=PROBE_TIMEOUT_S, within_deadline=within_deadline)

    def download(self, filename: str, subfolder: str, folder_type: str, dest: Path) -> int:
        """Stream a file from /view to dest; returns its size. Bounded by the job's deadline."""
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        what = f"GET /view for {filename}"
        limit, deadline = self._timeout(what, None, True)
        try:
            with self._http.stream("GET", "/view", params=params,
                                   timeout=httpx.Timeout(limit, connect=min(CONNECT_TIMEOUT_S, limit))) as response:
                if response.status_code != 200:
                    raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to /view for {filename}")
                size = 0
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
                        if self._deadline is not None and self._deadline.expired():
                            raise self._deadline.exceeded(f"fetching output {filename!r} from ComfyUI")
                return size
        except httpx.TimeoutException as exc:
            raise self._no_answer(what, limit, deadline) from exc
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI did not answer /view for {filename}: {exc}") from exc

    # -- write --------------------------------------------------------------------------

    def queue_prompt(self, graph: dict[str, Any], client_id: str, extra_data: dict[str, Any] | None = None,
                     prompt_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id. A 400 raises PromptRejected with node_errors.

        `prompt_id` chooses the id (ComfyUI 0.3.75 takes it), so a prompt whose POST got no
        answer can still be deleted or interrupted by id.
        """
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id}
        if prompt_id:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = extra_data
        response = self._request("POST", "/prompt", content=json.dumps(body), headers={"Content-Type": "application/json"})
        if response.status_code == 200:
            return response.json()["prompt_id"]
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text[:1000]}}
        raise prompt_rejection(response.status_code, payload)

    def upload(self, path: Path, name: str, subfolder: str = "", folder_type: str = "input") -> dict[str, Any]:
        """POST /upload/image (any file type); returns {name, subfolder, type}.

        Never overwrites: on a name ComfyUI already has, it stores the file as `name (1).ext`
        and says so in `name`.
        """
        with open(path, "rb") as fh:
            files = {"image": (name, fh, "application/octet-stream")}
            data = {"overwrite": "false", "subfolder": subfolder, "type": folder_type}
            return self._json("POST", "/upload/image", files=files, data=data)

    def interrupt(self, prompt_id: str | None = None, timeout_s: float | None = PROBE_TIMEOUT_S) -> None:
        """Stop the running prompt (only if it is `prompt_id`); not bounded by the job's deadline."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._request("POST", "/interrupt", json=body, timeout_s=timeout_s, within_deadline=False)

    def delete_from_queue(self, prompt_ids: list[str], timeout_s: float | None = PROBE_TIMEOUT_S) -> None:
        """Drop prompts that have not started; not bounded by the job's deadline."""
        self._request("POST", "/queue", json={"delete": prompt_ids}, timeout_s=timeout_s, within_deadline=False)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self._request("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory},
                      timeout_s=PROBE_TIMEOUT_S, within_deadline=False)


class _ObjectInfoCache:
    """ComfyUI's node classes, shared by a client and its per-job views."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: dict[str, Any] | None = None


def prompt_rejection(status: int, payload: dict[str, Any]) -> PromptRejected:
    """Turn ComfyUI's 400 body into an error that lists every node problem."""
    error = payload.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    node_errors = payload.get("node_errors") or {}
    problems = []
    for node_id, entry in node_errors.items():
        for err in entry.get("errors", []):
            problems.append({
                "node_id": node_id,
                "class_type": entry.get("class_type"),
                "type": err.get("type"),
                "message": err.get("message"),
                "details": err.get("details"),
                "input_name": (err.get("extra_info") or {}).get("input_name"),
            })
    summary = error.get("message") or f"ComfyUI refused the workflow (HTTP {status})"
    if error.get("details"):
        summary += f" ({error['details']})"
    if problems:
        summary += ": " + "; ".join(
            f"node {p['node_id']} ({p['class_type']}): {p['message']}" + (f" [{p['details']}]" if p["details"] else "")
            for p in problems
        )
    return PromptRejected(summary, details={"comfy_error": error, "node_errors": problems})
