"""Getting ComfyUI idle again after a job that did not end well.

After a timeout, a cancellation or a ComfyUI that stopped answering, the job's prompt is
dropped from the queue and interrupted, and the worker waits until ComfyUI is idle, so
the next job starts on a free ComfyUI. When that does not work, ComfyUI is replaced:

* it does not answer within PROBE_TIMEOUT_S (hung, deadlocked, SIGSTOPped): treated as a
  crash. An owned ComfyUI is killed and restarted; in attach mode the job asks RunPod to
  replace the worker, and a reaper thread keeps asking the frozen ComfyUI to drop the
  prompt, interrupts it if it ever runs, and removes the files it wrote;
* it answers, but the prompt is still running INTERRUPT_SETTLE_S after /interrupt (a node
  that never checks for interrupts): an owned ComfyUI is restarted, and in attach mode the
  worker asks to be replaced. The error names the node that did not stop.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any, Callable

from comfy.errors import ComfyUnavailable, ComfyUnresponsive, JobCancelled, JobError, JobTimeout
from comfy.server.client import PROBE_TIMEOUT_S, ComfyClient
from comfy.server.runtime import WorkerRuntime

log = logging.getLogger("comfy.job.recovery")

INTERRUPT_SETTLE_S = 5.0  # how long a prompt may take to stop after /interrupt
REAPER_WAIT_S = 600.0  # how long a reaper waits for a frozen, attached ComfyUI to answer again
REAPER_WATCH_S = 30.0  # then how long it watches for the abandoned prompt to run, to stop it


class Stop(enum.Enum):
    IDLE = "idle"  # the prompt is gone from the queue
    BUSY = "busy"  # ComfyUI answers, but the prompt still runs after INTERRUPT_SETTLE_S
    SILENT = "silent"  # ComfyUI did not answer within PROBE_TIMEOUT_S
    DEAD = "dead"  # ComfyUI refused the connection: it is gone (the crash path reports it)


def _holds(queue: dict[str, Any], prompt_id: str) -> tuple[bool, bool]:
    """(running, pending) of `prompt_id` in a /queue answer."""
    def has(key: str) -> bool:
        items = queue.get(key) if isinstance(queue, dict) else None
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items or ())
    return has("queue_running"), has("queue_pending")


def stop_prompt(client: ComfyClient, prompt_id: str) -> tuple[Stop, str]:
    """Drop the prompt from the queue, interrupt it, and wait until it is gone; say how it went."""
    try:
        client.delete_from_queue([prompt_id])  # first: a prompt not yet started then never starts
        client.interrupt(prompt_id)
        settle = time.monotonic() + INTERRUPT_SETTLE_S
        while True:
            running, pending = _holds(client.queue(timeout_s=PROBE_TIMEOUT_S, within_deadline=False), prompt_id)
            if not running and not pending:
                return Stop.IDLE, ""
            if time.monotonic() >= settle:
                return Stop.BUSY, f"prompt {prompt_id} still running {INTERRUPT_SETTLE_S:g} s after /interrupt"
            if pending:
                client.delete_from_queue([prompt_id])
            time.sleep(0.05)
    except ComfyUnresponsive as exc:
        return Stop.SILENT, exc.message
    except ComfyUnavailable as exc:
        return Stop.DEAD, exc.message


def probe(client: ComfyClient) -> tuple[Stop, str]:
    """Does ComfyUI still answer? (after a failure with no prompt of the job in its queue)"""
    try:
        client.queue(timeout_s=PROBE_TIMEOUT_S, within_deadline=False)
        return Stop.IDLE, ""
    except ComfyUnresponsive as exc:
        return Stop.SILENT, exc.message
    except ComfyUnavailable as exc:
        return Stop.DEAD, exc.message


def settle(
    runtime: WorkerRuntime, prompt_id: str | None, error: JobError, node: str | None,
    graph: dict[str, Any], on_abandoned: Callable[[dict[str, Any] | None], None],
) -> tuple[JobError, bool]:
    """Bring ComfyUI back to idle after `error` (a timeout, cancellation or silence); return the
    job's error (said more precisely) and whether ComfyUI was replaced: an owned one killed
    (the prompt's files are then the caller's to remove), or an attached one given up on (a
    reaper removes them later). `prompt_id`: the job's prompt if it may be queued or running.
    `on_abandoned(history)` removes the files of a prompt a reaper stopped later (attach mode)."""
    outcome, why = stop_prompt(runtime.client, prompt_id) if prompt_id else probe(runtime.client)
    if prompt_id and isinstance(error.details, dict | None):
        error.details = {**(error.details or {}), "prompt_id": prompt_id}
    if outcome is Stop.IDLE:
        if prompt_id and isinstance(error, (JobTimeout, JobCancelled)):
            _append(error, "; ComfyUI was interrupted")
        return error, False
    if outcome is Stop.DEAD:  # a crash: the next job restarts it, and the result asks for a new worker
        return (error if runtime.comfy_alive() else ComfyUnavailable(runtime.describe_death())), False
    owned = runtime.process is not None
    if owned:
        runtime.restart_comfy(why)
        replaced = "so ComfyUI was killed and is restarting"
    else:
        if prompt_id:
            reap_later(runtime.client, prompt_id, on_abandoned)
        replaced = "so this worker asks to be replaced (refresh_worker)"
    if outcome is Stop.BUSY and isinstance(error, (JobTimeout, JobCancelled)):
        _append(error, f"; {_describe(node, graph)} did not stop within {INTERRUPT_SETTLE_S:g} s of /interrupt, {replaced}")
        error.details = {**(error.details or {}), "node_id": node}
        error.refresh_worker = None if owned else "always"
        return error, True
    message = (f"{error.message}; {replaced}" if isinstance(error, ComfyUnresponsive)
               else f"ComfyUI stopped answering ({why}) after: {error.message}; {replaced}")
    silent = ComfyUnresponsive(message, details={"prompt_id": prompt_id, "cause": error.error_type, "reason": why})
    silent.refresh_worker = "after_crash" if owned else "always"
    return silent, True


def _append(error: JobError, text: str) -> None:
    error.message += text
    error.args = (error.message,)


def _describe(node: str | None, graph: dict[str, Any]) -> str:
    if node is None:
        return "the running node"
    return f"node {node} ({(graph.get(node) or {}).get('class_type')})"


def reap_later(client: ComfyClient, prompt_id: str, on_finished: Callable[[dict[str, Any] | None], None]) -> threading.Thread:
    """Watch a prompt left in a frozen, attached ComfyUI: once it answers again, drop the
    prompt, interrupt it if it runs, and hand its history to `on_finished` (its files go).

    The first request goes out at once and waits in ComfyUI's socket, so ComfyUI reads it
    as soon as it wakes. The thread ends by itself (REAPER_WAIT_S + REAPER_WATCH_S at most).
    """
    def run() -> None:
        give_up = time.monotonic() + REAPER_WAIT_S
        while True:
            try:
                client.delete_from_queue([prompt_id], timeout_s=max(1.0, give_up - time.monotonic()))
                break
            except ComfyUnavailable:
                if time.monotonic() >= give_up:
                    log.warning("abandoned prompt %s: ComfyUI did not answer again within %.0f s", prompt_id, REAPER_WAIT_S)
                    return
                time.sleep(1.0)
        watch_until = time.monotonic() + REAPER_WATCH_S
        while time.monotonic() < watch_until:
            try:
                running, pending = _holds(client.queue(timeout_s=PROBE_TIMEOUT_S, within_deadline=False), prompt_id)
                if running:
                    client.interrupt(prompt_id)
                elif pending:
                    client.delete_from_queue([prompt_id])
                else:
                    history = client.history(prompt_id, timeout_s=PROBE_TIMEOUT_S, within_deadline=False)
                    if history and (history.get("status") or {}).get("completed") is not None:
                        log.info("abandoned prompt %s has ended; removing its files", prompt_id)
                        try:
                            on_finished(history)
                        except Exception as exc:  # noqa: BLE001 - a background clean-up: log, never raise
                            log.warning("abandoned prompt %s: clean-up failed: %s", prompt_id, exc)
                        return
            except ComfyUnavailable as exc:
                log.debug("abandoned prompt %s: %s", prompt_id, exc)
            time.sleep(0.2)
        log.info("abandoned prompt %s never ran", prompt_id)

    def guarded() -> None:
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - e.g. the worker shutting its client down: just stop
            log.warning("abandoned prompt %s: reaper stopped: %s", prompt_id, exc)

    thread = threading.Thread(target=guarded, name=f"reap-{prompt_id[:8]}", daemon=True)
    thread.start()
    return thread
