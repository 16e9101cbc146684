"""A prompt's end: the result comes from the websocket's events, not a /history read that waits on ComfyUI.

ComfyUI sends `execution_success` before it writes the prompt's history entry, and then runs a
full gc.collect() that can hold its HTTP server for hundreds of milliseconds. TestStallAfterPrompt
(tests/comfy_nodes) holds ComfyUI's prompt worker right after `execution_success` for a few seconds,
so whatever waits on the history entry, or on ComfyUI answering after the prompt, waits that long.
"""

from __future__ import annotations

import base64
import threading
import time

from comfy.job.run import run_job
from tests.conftest import proxied_runtime, run_handler, unique_color

STALL_S = 6.0


def stalling_graph(prefix: str, sleep_s: float = 0.0) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": sleep_s}},
        "3": {"class_type": "TestStallAfterPrompt", "inputs": {"image": ["2", 0], "seconds": STALL_S}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def wait_until_comfyui_is_idle(worker, prompt_id: str) -> None:
    """The stalled prompt's history entry is written: the next test's prompt runs at once."""
    end = time.monotonic() + STALL_S + 30
    while time.monotonic() < end:
        if worker.RUNTIME.client.history(prompt_id, within_deadline=False):
            return
        time.sleep(0.1)
    raise AssertionError(f"ComfyUI never finished prompt {prompt_id}")


def test_the_result_does_not_wait_for_comfyui_after_execution_success(worker, comfy_output_dir):
    started = time.monotonic()
    result = run_handler(worker, {"workflow": stalling_graph("stall/after")})
    elapsed = time.monotonic() - started
    try:
        assert "error" not in result, result
        # ComfyUI wrote no history entry and answered nothing about the prompt for STALL_S after
        # execution_success: the result was built from the events.
        assert elapsed < STALL_S - 1, elapsed
        (image,) = result["images"]
        assert base64.b64decode(image["data"]).startswith(b"\x89PNG")
        assert result["outputs"][0]["node_id"] == "4"
        assert result["timings"]["execution_ms"] is not None  # ComfyUI's own timestamps, from the events
        assert not list(comfy_output_dir.glob("stall/after*"))  # delivered files are still removed
    finally:
        wait_until_comfyui_is_idle(worker, result["prompt_id"])


def test_a_dropped_websocket_falls_back_to_the_history_entry(worker):
    outcome: dict = {}
    with proxied_runtime(worker) as (runtime, proxy):  # attach mode, through the proxy
        thread = threading.Thread(target=lambda: outcome.update(
            run_job(runtime, {"workflow": stalling_graph("stall/dropped", sleep_s=2.0)}, "ws-drop-stall")))
        started = time.monotonic()
        thread.start()
        time.sleep(0.8)
        assert proxy.drop_websockets() == 1  # events of this prompt are lost: only /history is whole
        thread.join(timeout=STALL_S + 60)
        elapsed = time.monotonic() - started

    assert "error" not in outcome, outcome
    assert len(outcome["images"]) == 1 and outcome["outputs"][0]["node_id"] == "4"
    assert elapsed >= 2.0 + STALL_S - 0.5, elapsed  # it waited for the history entry
    wait_until_comfyui_is_idle(worker, outcome["prompt_id"])
