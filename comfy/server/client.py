"""ComfyUI's HTTP API, through one keep-alive httpx client.

Request and response shapes: ../shared/notes/comfyui.md (ComfyUI 0.3.75).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx

from comfy.errors import ComfyUnavailable, PromptRejected


class ComfyClient:
    """A client for one ComfyUI server. Thread-safe (httpx.Client is)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_keepalive_connections=4, keepalive_expiry=300),
            transport=transport,
        )
        self._object_info: dict[str, Any] | None = None
        self._object_info_lock = threading.Lock()

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/ws"

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {method} {path}: {exc}") from exc

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyUnavailable(
                f"ComfyUI answered {response.status_code} to {method} {path}: {response.text[:500]}"
            )
        return response.json()

    # -- read ---------------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        return self._json("GET", "/system_stats")

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """Every node class ComfyUI knows, cached for the life of the process."""
        with self._object_info_lock:
            if self._object_info is None or refresh:
                self._object_info = self._json("GET", "/object_info")
            return self._object_info

    def forget_object_info(self) -> None:
        """Drop the cache: a restarted ComfyUI may have loaded other custom nodes."""
        with self._object_info_lock:
            self._object_info = None

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a prompt, or None while it has none."""
        entries = self._json("GET", f"/history/{prompt_id}")
        return entries.get(prompt_id)

    def queue(self) -> dict[str, Any]:
        return self._json("GET", "/queue")

    def download(self, filename: str, subfolder: str, folder_type: str, dest: Path) -> int:
        """Stream a file from /view to dest; returns its size."""
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        try:
            with self._http.stream("GET", "/view", params=params) as response:
                if response.status_code != 200:
                    raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to /view for {filename}")
                size = 0
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
                return size
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"ComfyUI did not answer /view for {filename}: {exc}") from exc

    # -- write --------------------------------------------------------------------------

    def queue_prompt(self, graph: dict[str, Any], client_id: str, extra_data: dict[str, Any] | None = None) -> str:
        """POST /prompt; returns the prompt id. A 400 raises PromptRejected with node_errors."""
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id}
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
        """POST /upload/image (any file type) with overwrite; returns {name, subfolder, type}."""
        with open(path, "rb") as fh:
            files = {"image": (name, fh, "application/octet-stream")}
            data = {"overwrite": "true", "subfolder": subfolder, "type": folder_type}
            return self._json("POST", "/upload/image", files=files, data=data)

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._request("POST", "/interrupt", json=body)

    def delete_from_queue(self, prompt_ids: list[str]) -> None:
        self._request("POST", "/queue", json={"delete": prompt_ids})

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self._request("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})


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
