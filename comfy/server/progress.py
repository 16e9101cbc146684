"""Progress updates for RunPod's /status, rate-limited."""

from __future__ import annotations

import time
from typing import Any, Callable

from pydantic import BaseModel


class Progress(BaseModel):
    """What a client polling /status sees while the job runs."""

    node: str
    class_type: str | None
    value: int
    max: int
    percent: float
    nodes_done: int
    nodes_total: int


class ProgressReporter:
    """Turns ComfyUI progress events into updates, at most one per interval.

    The last update of a node (value == max) is always sent so a client sees each node end.
    """

    def __init__(self, graph: dict[str, Any], send: Callable[[dict[str, Any]], None], interval_s: float) -> None:
        self._graph = graph
        self._send = send
        self._interval_s = interval_s
        self._last_sent = float("-inf")
        self._done: set[str] = set()
        self._current: str | None = None
        self._total = len(graph)
        self.sent = 0

    def node_finished(self, node_id: str) -> None:
        self._done.add(str(node_id))

    def nodes_cached(self, node_ids: list[str]) -> None:
        self._done.update(str(n) for n in node_ids)

    def update(self, node_id: str, value: int, maximum: int) -> None:
        node_id = str(node_id)
        if self._current is not None and node_id != self._current:
            self._done.add(self._current)  # ComfyUI runs one node at a time: the previous one has finished
        self._current = node_id
        now = time.monotonic()
        final = maximum > 0 and value >= maximum
        if not final and now - self._last_sent < self._interval_s:
            return
        progress = Progress(
            node=node_id,
            class_type=(self._graph.get(node_id) or {}).get("class_type"),
            value=value,
            max=maximum,
            percent=round(100.0 * value / maximum, 1) if maximum > 0 else 0.0,
            nodes_done=len(self._done),
            nodes_total=self._total,
        )
        self._last_sent = now
        self.sent += 1
        self._send(progress.model_dump())
