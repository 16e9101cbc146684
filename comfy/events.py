"""ComfyUI's /ws event stream, read with websocket-client.

One connection per worker, reused across jobs (a fixed client id), reconnected when it
drops. Messages are JSON objects {type, data}; binary frames (previews) are skipped.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import websocket

log = logging.getLogger("comfy.events")


class EventStreamClosed(ConnectionError):
    """The websocket dropped; reconnect, and meanwhile trust /history."""


class ComfyEvents:
    """The worker's websocket to ComfyUI."""

    def __init__(self, ws_url: str, client_id: str | None = None) -> None:
        self.client_id = client_id or f"worker-{uuid.uuid4().hex}"
        self._url = f"{ws_url}?clientId={self.client_id}"
        self._ws: websocket.WebSocket | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.connected

    def connect(self, timeout_s: float = 5.0) -> bool:
        """(Re)connect; False when ComfyUI does not accept the connection."""
        self.close()
        try:
            self._ws = websocket.create_connection(self._url, timeout=timeout_s, enable_multithread=True)
            return True
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("websocket connect to %s failed: %s", self._url, exc)
            self._ws = None
            return False

    def recv(self, timeout_s: float) -> dict[str, Any] | None:
        """The next JSON message, or None when none came within timeout_s."""
        ws = self._ws
        if ws is None:
            raise EventStreamClosed("websocket is not connected")
        ws.settimeout(max(timeout_s, 0.001))
        try:
            frame = ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as exc:
            self.close()
            raise EventStreamClosed(f"websocket dropped: {exc}") from exc
        if not isinstance(frame, str):
            return None  # binary preview frame
        if frame == "":
            self.close()
            raise EventStreamClosed("websocket closed by ComfyUI")
        try:
            message = json.loads(frame)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except (OSError, websocket.WebSocketException):
                pass
