"""Failures during a job: node errors, deadlines, cancellation, a dying ComfyUI, a dropped websocket."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from tests.conftest import empty_image_graph, proxied_runtime, run_handler, unique_color


def sleeping_graph(seconds: float, color: int | None = None) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                     "color": unique_color() if color is None else color}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sleep/out"}},
    }


def test_a_node_that_raises_gives_an_error_naming_node_and_exception(worker):
    workflow = {
        "1": {"class_type": "TestRaise", "inputs": {"message": "the GPU caught fire"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}},
    }
    started = time.monotonic()
    result = run_handler(worker, {"workflow": workflow})

    assert time.monotonic() - started < 10  # noticed at once, not after a timeout
    assert result["error_type"] == "execution_error"
    assert result["error"] == "node 1 (TestRaise) raised ValueError: the GPU caught fire"
    details = result["details"]
    assert details["node_id"] == "1" and details["class_type"] == "TestRaise"
    assert any("raise ValueError(message)" in line for line in details["traceback"])


def test_deadline_interrupts_comfyui_and_the_next_job_starts_at_once(worker):
    started = time.monotonic()
    result = run_handler(worker, {"workflow": sleeping_graph(60), "timeout_s": 1.5})
    elapsed = time.monotonic() - started

    assert result["error_type"] == "timeout"
    assert "did not finish within 1.5 s" in result["error"]
    assert elapsed < 1.5 + 6
    assert worker.RUNTIME.client.queue()["queue_running"] == []

    started = time.monotonic()
    nxt = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in nxt, nxt
    assert time.monotonic() - started < 2


def test_runpod_cancellation_interrupts_comfyui(worker):
    async def cancel_midway():
        task = asyncio.create_task(worker.handler({"id": "cancel-me", "input": {"workflow": sleeping_graph(60)}}))
        await asyncio.sleep(1.0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert asyncio.run(cancel_midway()) == "cancelled"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and worker.RUNTIME.client.queue()["queue_running"]:
        time.sleep(0.05)
    assert worker.RUNTIME.client.queue()["queue_running"] == []
    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in result, result


def test_progress_is_reported_rate_limited_with_node_details(worker):
    updates: list[dict] = []
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "TestProgress", "inputs": {"image": ["1", 0], "steps": 8}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "progress/out"}},
    }
    runtime = WorkerRuntime(dataclasses.replace(worker.SETTINGS, progress_interval_s=0.12), worker.PROCESS)
    try:
        result = run_job(runtime, {"workflow": workflow}, "progress-job", updates.append)
    finally:
        runtime.events.close()

    assert "error" not in result, result
    steps = [u for u in updates if u["node"] == "2" and u["max"] == 8]
    assert steps and steps[-1] == {**steps[-1], "value": 8, "percent": 100.0, "class_type": "TestProgress"}
    assert len(steps) < 8  # 8 steps 50 ms apart, at most one update per 120 ms (plus the last)
    assert all(u["nodes_total"] == 3 for u in updates)


def test_comfyui_killed_during_a_job_gives_a_clear_error_and_the_next_job_restarts_it(worker):
    process = worker.PROCESS
    old_pid = process.pid
    outcome: dict = {}

    thread = threading.Thread(target=lambda: outcome.update(run_handler(worker, {"workflow": sleeping_graph(30)})))
    thread.start()
    time.sleep(1.5)
    os.kill(old_pid, signal.SIGKILL)
    thread.join(timeout=20)

    assert not thread.is_alive()
    assert outcome["error_type"] == "comfy_unavailable"
    assert "killed by signal 9" in outcome["error"]
    assert outcome["refresh_worker"] is True  # RunPod replaces a worker whose ComfyUI crashed

    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in result, result
    assert process.pid != old_pid and process.restarts >= 1


def test_a_dropped_websocket_does_not_lose_the_job(worker):
    outcome: dict = {}
    with proxied_runtime(worker) as (runtime, proxy):  # attach mode, through the proxy
        thread = threading.Thread(
            target=lambda: outcome.update(run_job(runtime, {"workflow": sleeping_graph(2.0)}, "ws-drop"))
        )
        thread.start()
        time.sleep(0.8)
        assert proxy.drop_websockets() == 1
        thread.join(timeout=30)

    assert "error" not in outcome, outcome
    assert len(outcome["images"]) == 1
    assert proxy.websocket_connects >= 2  # it reconnected


def test_free_after_job_and_refresh_worker_settings(worker):
    from comfy.settings import FreeAfterJob

    settings = dataclasses.replace(worker.SETTINGS, free_after_job=FreeAfterJob.MODELS, refresh_worker=True)
    runtime = WorkerRuntime(settings, worker.PROCESS)
    try:
        result = run_job(runtime, {"workflow": empty_image_graph(color=unique_color())}, "free-job")
    finally:
        runtime.events.close()
    assert "error" not in result, result
    assert result["refresh_worker"] is True
