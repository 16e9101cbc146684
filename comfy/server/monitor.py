"""Follow one queued prompt to its end: websocket first, /history where the events are not whole.

When the websocket stayed up from before the prompt was queued until its `execution_success`,
the events carry everything its history entry would: each output node's `executed` output
(cached nodes included) and ComfyUI's own start and end timestamps. The result is then built
from them and /history is not read: ComfyUI writes the entry only after `execution_success`, so
a read at that moment races it, and right after a prompt ComfyUI's worker thread runs a full
`gc.collect()` (at most every 10 s) that holds its GIL, stalling its HTTP answers (up to
~350 ms measured after a first prompt: docs/benchmarks.md, "Prompt end"). A dropped or
reconnected websocket, or an older ComfyUI that ends a prompt with `executing` node None
only, falls back to /history.

Ends with the prompt's history entry on success, or raises: ExecutionFailed (a node
raised), ExecutionInterrupted, ComfyUnavailable (ComfyUI died), ComfyUnresponsive (it
stopped answering), JobTimeout or JobCancelled (the caller stops the prompt for the last three).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from comfy.deadline import Deadline
from comfy.server.client import ComfyClient
from comfy.errors import ComfyUnavailable, ComfyUnresponsive, ExecutionFailed, ExecutionInterrupted, JobCancelled
from comfy.server.events import ComfyEvents, EventStreamClosed
from comfy.server.progress import ProgressReporter

log = logging.getLogger("comfy.server.monitor")

RECV_SLICE_S = 0.25  # how often deadline, cancellation and process health are checked
HISTORY_CHECK_S = 2.0  # while the websocket is up: a cheap safety net for a missed end
HISTORY_POLL_S = 0.2  # while the websocket is down
RECONNECT_EVERY_S = 1.0
TRACEBACK_TAIL_LINES = 8


@dataclass
class PromptResult:
    """A finished prompt: its history entry and ComfyUI's own timestamps (ms since epoch)."""

    history: dict[str, Any]
    execution_start_ms: float | None
    execution_end_ms: float | None


def _message_timestamps(history: dict[str, Any]) -> tuple[float | None, float | None]:
    start = end = None
    for entry in history.get("status", {}).get("messages", []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            continue
        kind, data = entry
        if kind == "execution_start":
            start = data.get("timestamp")
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
    return start, end


def execution_failure(data: dict[str, Any]) -> ExecutionFailed:
    """An execution_error message as an error naming node, class and exception."""
    traceback = data.get("traceback") or []
    if isinstance(traceback, list):
        traceback_text = "".join(traceback)
    else:
        traceback_text = str(traceback)
    tail = traceback_text.strip().splitlines()[-TRACEBACK_TAIL_LINES:]
    node_id = str(data.get("node_id"))
    class_type = data.get("node_type")
    exception = data.get("exception_type") or "Exception"
    message = data.get("exception_message") or ""
    return ExecutionFailed(
        f"node {node_id} ({class_type}) raised {exception}: {str(message).strip()}",
        details={
            "node_id": node_id,
            "class_type": class_type,
            "exception_type": exception,
            "exception_message": message,
            "traceback": tail,
        },
    )


def _outcome_from_history(history: dict[str, Any]) -> PromptResult | None:
    """A finished history entry as a result (or raise its failure); None while running."""
    status = history.get("status") or {}
    status_str = status.get("status_str")
    if status_str == "error":
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                raise execution_failure(data)
            if kind == "execution_interrupted":
                raise ExecutionInterrupted("ComfyUI interrupted the workflow", details=data)
        raise ExecutionFailed("ComfyUI reported the workflow failed", details=status)
    if status_str == "success" or status.get("completed"):
        start, end = _message_timestamps(history)
        return PromptResult(history, start, end)
    return None


@dataclass
class _PromptEvents:
    """What the websocket said about one prompt, enough to stand in for its history entry."""

    whole: bool  # the stream stayed up since before the prompt was queued
    start: dict[str, Any] | None = None  # execution_start's data (ComfyUI's timestamp)
    outputs: dict[str, Any] = field(default_factory=dict)  # node id -> its `executed` output

    def as_result(self, success: dict[str, Any]) -> PromptResult | None:
        """The prompt's result from its events, or None when they may be missing some."""
        if not self.whole or self.start is None:
            return None
        history = {
            "outputs": self.outputs,
            "status": {"status_str": "success", "completed": True,
                       "messages": [["execution_start", self.start], ["execution_success", success]]},
        }
        return PromptResult(history, self.start.get("timestamp"), success.get("timestamp"))


class PromptMonitor:
    """Waits for one prompt, forwarding progress."""

    def __init__(
        self,
        client: ComfyClient,
        events: ComfyEvents,
        comfy_alive: Callable[[], bool],
        describe_death: Callable[[], str],
    ) -> None:
        self.client = client
        self.events = events
        self.comfy_alive = comfy_alive
        self.describe_death = describe_death
        self.current_node: str | None = None  # the node the last `executing` event named

    def wait(
        self,
        prompt_id: str,
        deadline: Deadline,
        cancel: threading.Event,
        progress: ProgressReporter | None = None,
    ) -> PromptResult:
        """Follow the prompt to its end; the deadline also bounds every /history check."""
        client = self.client.bounded(deadline)
        next_history_check = time.monotonic() + HISTORY_CHECK_S
        last_reconnect = 0.0
        finished = False
        self.current_node = None
        seen = _PromptEvents(whole=self.events.connected)
        while True:
            now = time.monotonic()
            if cancel.is_set():
                raise JobCancelled("the job was cancelled", details={"prompt_id": prompt_id})
            if not self.comfy_alive():
                raise ComfyUnavailable(self.describe_death())
            if deadline.expired():
                raise deadline.exceeded("running the workflow")

            message = None
            if self.events.connected:
                try:
                    message = self.events.recv(min(RECV_SLICE_S, max(deadline.remaining(), 0.001)))
                except EventStreamClosed as exc:
                    log.warning("prompt %s: %s; following /history until it reconnects", prompt_id, exc)
                    next_history_check = now
                    seen.whole = False
            elif now - last_reconnect >= RECONNECT_EVERY_S:
                last_reconnect = now
                if self.events.connect(timeout_s=max(deadline.bound(5.0), 0.001)):
                    log.info("prompt %s: websocket reconnected", prompt_id)
                    next_history_check = now  # events sent while it was down are lost
                else:
                    time.sleep(deadline.bound(HISTORY_POLL_S))
            else:
                time.sleep(deadline.bound(HISTORY_POLL_S))

            if message is not None:
                finished = self._handle(message, prompt_id, progress, seen)
                if finished and isinstance(finished, dict):
                    result = seen.as_result(finished)
                    if result is not None:
                        return result

            if finished or time.monotonic() >= next_history_check:
                result = self._check_history(client, prompt_id)
                if result is not None:
                    return result
                if finished:
                    # The end event came before ComfyUI wrote the history entry.
                    time.sleep(0.002)
                    continue
                next_history_check = time.monotonic() + (
                    HISTORY_CHECK_S if self.events.connected else HISTORY_POLL_S
                )

    def _check_history(self, client: ComfyClient, prompt_id: str) -> PromptResult | None:
        try:
            history = client.history(prompt_id)
        except ComfyUnresponsive:
            raise
        except ComfyUnavailable:
            # A killed ComfyUI's sockets close a moment before it can be reaped: give it that moment,
            # so the error says how it died.
            for _ in range(20):
                if not self.comfy_alive():
                    raise ComfyUnavailable(self.describe_death()) from None
                time.sleep(0.1)
            raise
        return _outcome_from_history(history) if history else None

    def _handle(self, message: dict[str, Any], prompt_id: str, progress: ProgressReporter | None,
                seen: _PromptEvents) -> bool | dict[str, Any]:
        """React to one event: execution_success's data or True once the prompt has ended successfully."""
        kind = message.get("type")
        data = message.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") not in (prompt_id, None):
            return False
        if kind == "execution_error" and data.get("prompt_id") == prompt_id:
            raise execution_failure(data)
        if kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
            raise ExecutionInterrupted(
                f"ComfyUI interrupted the workflow at node {data.get('node_id')} ({data.get('node_type')})",
                details=data,
            )
        if kind == "execution_success" and data.get("prompt_id") == prompt_id:
            return data
        if data.get("prompt_id") != prompt_id:
            return False
        if kind == "execution_start":
            seen.start = data
        elif kind == "executed" and data.get("node") is not None and data.get("output") is not None:
            seen.outputs[str(data["node"])] = data["output"]
        if kind == "executing":
            if data.get("node") is None:
                return True  # older ComfyUI: the end of the prompt
            self.current_node = str(data["node"])
            if progress is not None:
                progress.update(str(data["node"]), 0, 1)
        elif kind == "executed" and progress is not None:
            progress.node_finished(str(data.get("node")))
        elif kind == "execution_cached" and progress is not None:
            progress.nodes_cached([str(n) for n in data.get("nodes", [])])
        elif kind == "progress" and progress is not None:
            progress.update(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 0)))
        return False
