"""ComfyUI's /ws event stream, read with websocket-client.

One connection per worker, reused across jobs (a fixed client id), reconnected when it
drops. A reader thread drains the socket all the time, also between jobs: a client that
stops reading would make ComfyUI's sender wait on it (chatty custom nodes broadcast every
second). Messages are JSON objects {type, data}; binary frames (previews) are skipped.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from typing import Any

import websocket

log = logging.getLogger("comfy.server.events")

MAX_BUFFERED = 10_000  # messages kept while nobody reads (between jobs); older ones go


class EventStreamClosed(ConnectionError):
    """The websocket dropped; reconnect, and meanwhile trust /history."""


_CLOSED = object()


class ComfyEvents:
    """The worker's websocket to ComfyUI."""

    def __init__(self, ws_url: str, client_id: str | None = None) -> None:
        self.client_id = client_id or f"worker-{uuid.uuid4().hex}"
        self._url = f"{ws_url}?clientId={self.client_id}"
        self._ws: websocket.WebSocket | None = None
        self._messages: queue.Queue[Any] = queue.Queue(maxsize=MAX_BUFFERED)
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        ws = self._ws
        return ws is not None and ws.connected

    def connect(self, timeout_s: float = 5.0) -> bool:
        """(Re)connect; False when ComfyUI does not accept the connection."""
        self.close()
        try:
            ws = websocket.create_connection(self._url, timeout=timeout_s)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("websocket connect to %s failed: %s", self._url, exc)
            return False
        ws.settimeout(None)
        with self._lock:
            self._ws = ws
            self._messages = queue.Queue(maxsize=MAX_BUFFERED)
            messages = self._messages
        threading.Thread(target=self._read, args=(ws, messages), name="comfy-ws", daemon=True).start()
        return True

    def _read(self, ws: websocket.WebSocket, messages: queue.Queue) -> None:
        while True:
            try:
                frame = ws.recv()
            except (OSError, websocket.WebSocketException):
                break
            if isinstance(frame, bytes):
                continue  # binary preview frame
            if frame == "":
                break  # closed by ComfyUI
            try:
                message = json.loads(frame)
            except ValueError:
                continue
            if isinstance(message, dict):
                self._put(messages, message)
        with self._lock:
            if self._ws is ws:
                self._ws = None
        self._put(messages, _CLOSED)

    @staticmethod
    def _put(messages: queue.Queue, item: Any) -> None:
        while True:
            try:
                messages.put_nowait(item)
                return
            except queue.Full:
                try:
                    messages.get_nowait()  # drop the oldest
                except queue.Empty:
                    pass

    def discard_pending(self) -> None:
        """Forget messages that arrived between jobs (call before queueing a prompt)."""
        messages = self._messages
        while True:
            try:
                item = messages.get_nowait()
            except queue.Empty:
                return
            if item is _CLOSED:
                self._put(messages, _CLOSED)  # keep the news of a drop for recv()
                return

    def recv(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message, or None when none came within timeout_s."""
        try:
            item = self._messages.get(timeout=max(timeout_s, 0.001))
        except queue.Empty:
            if not self.connected:
                raise EventStreamClosed("websocket is not connected") from None
            return None
        if item is _CLOSED:
            raise EventStreamClosed("websocket dropped")
        return item

    def close(self) -> None:
        with self._lock:
            ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except (OSError, websocket.WebSocketException):
                pass
