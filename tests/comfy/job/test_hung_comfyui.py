"""A ComfyUI that stops answering (SIGSTOP stands in for a deadlock) is treated like a crashed
one, and a node that ignores /interrupt does not poison the jobs after it.

These tests freeze or replace the session's ComfyUI; each leaves it running and answering
(the next job restarts or waits for it), as the SIGKILL test in test_failures.py does. A
ComfyUI frozen between jobs: tests/comfy/server/test_process.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from tests.conftest import empty_image_graph, run_handler, unique_color


def _graph(sleep_class: str, seconds: float, prefix: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": sleep_class, "inputs": {"image": ["1", 0], "seconds": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


@contextlib.contextmanager
def frozen(pid: int):
    """SIGSTOP the process; SIGCONT it on the way out whatever happened (a no-op once it is gone)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _in_background(fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(fn()))
    thread.start()
    return thread, outcome


def _files_under(worker, prefix_folder: str) -> list[Path]:
    folder = Path(worker.SETTINGS.comfy_path) / "output" / prefix_folder
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_a_comfyui_frozen_mid_job_is_killed_and_restarted_near_the_deadline(worker):
    process = worker.PROCESS
    old_pid = process.pid
    started = time.monotonic()
    thread, outcome = _in_background(
        lambda: run_handler(worker, {"workflow": _graph("TestSleep", 30, "hung/owned"), "timeout_s": 5}))
    time.sleep(1.5)
    with frozen(old_pid):
        thread.join(timeout=40)
    elapsed = time.monotonic() - started

    assert not thread.is_alive()
    assert outcome["error_type"] == "comfy_unavailable", outcome
    assert "stopped answering" in outcome["error"] and "ComfyUI was killed and is restarting" in outcome["error"]
    assert outcome["refresh_worker"] is True  # REFRESH_WORKER_AFTER_CRASH: like a crash
    assert elapsed < 5 + 5 + 10  # the deadline, one probe, the kill: not 30 s per request
    assert process.pid != old_pid and process.is_alive()

    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})  # waits for the new one
    assert "error" not in result, result
    assert _files_under(worker, "hung") == []


def test_a_node_that_ignores_interrupt_gets_comfyui_restarted_and_is_named(worker):
    process = worker.PROCESS
    old_pid = process.pid
    started = time.monotonic()

    result = run_handler(worker, {"workflow": _graph("TestIgnoreInterrupt", 60, "hung/ignore"), "timeout_s": 2})

    assert result["error_type"] == "timeout", result
    assert "node 2 (TestIgnoreInterrupt) did not stop within 5 s of /interrupt" in result["error"]
    assert "ComfyUI was killed and is restarting" in result["error"]
    assert result["details"]["node_id"] == "2"
    assert "refresh_worker" not in result  # the worker itself is fine: its ComfyUI is new
    assert time.monotonic() - started < 2 + 5 + 10
    assert process.pid != old_pid

    nxt = run_handler(worker, {"workflow": empty_image_graph(color=unique_color()), "timeout_s": 120})
    assert "error" not in nxt, nxt  # not a `timeout` blamed on its own workflow
    assert _files_under(worker, "hung") == []


def test_an_attached_comfyui_that_freezes_fails_the_job_with_refresh_and_its_queued_prompt_never_runs(worker):
    settings = dataclasses.replace(worker.SETTINGS, comfy_url=worker.SETTINGS.base_url)
    runtime = WorkerRuntime(settings)  # attach mode: the worker owns no process to kill
    client = worker.RUNTIME.client
    pid = worker.PROCESS.pid
    # Someone else's long prompt runs first, so the job's prompt waits in ComfyUI's queue.
    blocker = client.queue_prompt(_graph("TestSleep", 25, "hung/blocker"), "someone-else")
    try:
        started = time.monotonic()
        thread, outcome = _in_background(
            lambda: run_job(runtime, {"workflow": empty_image_graph("hung/attached", color=unique_color()),
                                      "timeout_s": 3}, "attached"))
        time.sleep(1.0)
        with frozen(pid):
            thread.join(timeout=40)
            elapsed = time.monotonic() - started
        assert outcome["error_type"] == "comfy_unavailable", outcome
        assert outcome["refresh_worker"] is True
        assert "stopped answering" in outcome["error"] and "this worker asks to be replaced" in outcome["error"]
        assert elapsed < 3 + 5 + 8

        # Thawed, with the blocker still running: the job's queued prompt is dropped, never run.
        prompt_id = outcome["details"]["prompt_id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(item[1] == prompt_id for item in client.queue()["queue_pending"]):
            time.sleep(0.1)
        assert not any(item[1] == prompt_id for item in client.queue()["queue_pending"])
        client.interrupt(blocker)
        while time.monotonic() < deadline + 10 and client.queue()["queue_running"]:
            time.sleep(0.1)
        assert client.history(prompt_id) is None  # it never ran
        assert _files_under(worker, "hung") == []
        assert worker.PROCESS.pid == pid  # attach mode never kills what it does not own
    finally:
        client.delete_from_queue([blocker])
        client.interrupt(blocker)
        runtime.shutdown()
    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in result, result


def test_a_prompt_running_when_an_attached_comfyui_froze_leaves_no_files_once_it_thaws(worker):
    settings = dataclasses.replace(worker.SETTINGS, comfy_url=worker.SETTINGS.base_url)
    runtime = WorkerRuntime(settings)
    pid = worker.PROCESS.pid
    try:
        thread, outcome = _in_background(
            lambda: run_job(runtime, {"workflow": _graph("TestSleep", 3, "hung/running"), "timeout_s": 2}, "running"))
        time.sleep(1.0)
        with frozen(pid):
            thread.join(timeout=40)
            assert outcome["error_type"] == "comfy_unavailable", outcome
            time.sleep(2.5)  # by the clock its node is done: on waking it saves at once, unless stopped first
        # Thawed: the reaper interrupts the prompt, or removes what it wrote once it has ended.
        prompt_id = outcome["details"]["prompt_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(t.name == f"reap-{prompt_id[:8]}" for t in threading.enumerate()):
            time.sleep(0.1)
        assert worker.RUNTIME.client.history(prompt_id) is not None  # it did end, one way or the other
        assert _files_under(worker, "hung") == []
    finally:
        runtime.shutdown()
