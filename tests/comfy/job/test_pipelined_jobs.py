"""Pipelined jobs (JOB_CONCURRENCY=2) in one process, on the session's real ComfyUI: a job still
delivering keeps its own files while the next prompt runs, and the next job's deadline leaves
out its wait for ComfyUI. Through the real SDK loop: test_pipelined_platform.py."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, s3_client
from tests.comfy.job.test_hung_comfyui import frozen
from tests.conftest import file_bytes, png_bytes, unique_color
from tests.doubles.tcp_proxy import TcpProxy

pytestmark = pytest.mark.comfy


@pytest.fixture()
def pipelined(worker) -> Iterator[WorkerRuntime]:
    """A JOB_CONCURRENCY=2 runtime on the session's ComfyUI process (its own client and websocket)."""
    runtime = WorkerRuntime(dataclasses.replace(worker.SETTINGS, job_concurrency=2), worker.PROCESS)
    assert runtime.pipeline.pipelined
    yield runtime
    runtime.events.close()
    runtime.client.close()


@pytest.fixture()
def held_s3(s3_server, s3_bucket, private_urls_allowed) -> Iterator[tuple[dict[str, Any], TcpProxy, threading.Event]]:
    """A job `output` to moto's S3 through a proxy whose connections wait until the gate opens."""
    gate = threading.Event()
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]), gate=gate)
    output = {"mode": "s3", "endpoint_url": f"http://127.0.0.1:{proxy.port}", "bucket": s3_bucket,
              "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET, "poster": False}
    try:
        yield output, proxy, gate
    finally:
        gate.set()
        proxy.close()


def _in_background(fn) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(fn()))
    thread.start()
    return thread, outcome


def _until(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


def _pixel(data: bytes) -> tuple[int, int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))


def _fixed_name_job(color: int, subfolder: str) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "TestFixedNameImage", "inputs": {"images": ["1", 0], "name": "fixed.png",
                                                                   "subfolder": subfolder}}}


def test_the_next_prompt_writing_the_same_file_name_never_reaches_a_job_still_delivering(
        worker, pipelined, held_s3, s3_server):
    output, proxy, gate = held_s3
    first_color, second_color = unique_color(), unique_color()
    folder = Path(worker.SETTINGS.comfy_path) / "output" / "pipe-fixed"

    first, first_result = _in_background(lambda: run_job(
        pipelined, {"workflow": _fixed_name_job(first_color, "pipe-fixed"), "output": output}, "fixed-first"))
    _until(lambda: proxy.held > 0, "the first job's upload waiting at the gate")  # it is delivering, outside the slot
    second = run_job(pipelined, {"workflow": _fixed_name_job(second_color, "pipe-fixed")}, "fixed-second")
    gate.set()
    first.join(60)

    assert "error" not in second, second
    assert _pixel(file_bytes(second, second["outputs"][0])) == _rgb(second_color)
    assert "error" not in first_result, first_result
    [entry] = first_result["outputs"]
    assert entry["filename"] == "fixed.png" and entry["delivery"] == "s3"
    stored = s3_client(s3_server).get_object(Bucket=output["bucket"], Key=entry["storage_path"])["Body"].read()
    assert _pixel(stored) == _rgb(first_color)  # its own bytes, not the second prompt's
    assert first_result["timings"]["slot_wait_ms"] == 0 and second["timings"]["slot_wait_ms"] >= 0
    assert not folder.exists() or list(folder.rglob("*")) == []
    assert not list((Path(worker.SETTINGS.comfy_path) / "output").glob(".worker-held-*"))


def test_outputs_being_delivered_survive_a_restart_of_comfyui(worker, pipelined, held_s3, s3_server):
    output, proxy, gate = held_s3
    color = unique_color()
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    temp = Path(worker.SETTINGS.comfy_path) / "temp"

    thread, result = _in_background(lambda: run_job(
        pipelined, {"workflow": graph, "output": output, "include_temp": True}, "held-temp"))
    _until(lambda: proxy.held > 0, "the job's upload waiting at the gate")
    old_pid = worker.PROCESS.pid
    pipelined.restart_comfy("a test restarts ComfyUI while a job delivers")  # what the next job's hang would do
    worker.PROCESS.wait_ready()  # a new ComfyUI empties temp/ as it starts
    assert worker.PROCESS.pid != old_pid and not list(temp.rglob("*.png"))
    gate.set()
    thread.join(60)

    assert "error" not in result, result
    [entry] = result["outputs"]
    assert entry["folder_type"] == "temp" and entry["delivery"] == "s3"
    stored = s3_client(s3_server).get_object(Bucket=output["bucket"], Key=entry["storage_path"])["Body"].read()
    assert _pixel(stored) == _rgb(color)


def test_a_jobs_deadline_leaves_out_its_wait_for_the_prompt_ahead_of_it(pipelined):
    slow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
            "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 4.0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pipe/slow"}}}
    quick = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pipe/quick"}}}

    thread, first = _in_background(lambda: run_job(pipelined, {"workflow": slow}, "slow"))
    _until(lambda: pipelined.pipeline.current() and pipelined.pipeline.current()[0][1] == "execute", "the slow prompt")
    second = run_job(pipelined, {"workflow": quick, "timeout_s": 2}, "quick")  # waits ~4 s for the slot
    thread.join(60)

    assert "error" not in first, first
    assert "error" not in second, second  # 2 s of its own, not of the slow job's prompt
    assert second["timings"]["slot_wait_ms"] > 2500
    assert second["timings"]["total_ms"] > second["timings"]["slot_wait_ms"]


# --- attacks: each stage cancelled, a prepare that fails, ComfyUI frozen or killed, the disk bound --------


def _near(rgb: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    """Within 1 per channel (ComfyUI's round trip through floats)."""
    return all(abs(a - b) <= 1 for a, b in zip(rgb, expected))


def _stage(runtime: WorkerRuntime, job_id: str) -> str | None:
    return dict(runtime.pipeline.current()).get(job_id)


def _sleep_graph(seconds: float, prefix: str) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
            "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": seconds}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def _download_job(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    """A PNG fetched from `url` into LoadImage, inverted and saved."""
    return {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
                         "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}},
            "inputs": [{"node": "1", "field": "image", "url": url, "name": "in.png"}], **extra}


def _inputs_of(worker, tag: str) -> list[Path]:
    """Files of ComfyUI's input folder whose name carries `tag` (staged names keep the given name)."""
    return [p for p in (Path(worker.SETTINGS.comfy_path) / "input").rglob("*") if tag in p.name]


@pytest.fixture()
def media(media_server, private_urls_allowed):
    return media_server


def test_a_job_cancelled_while_it_waits_for_comfyui_ends_at_once_and_the_running_prompt_runs_on(
        worker, pipelined, media):
    url = media.add("/waiting.png", body=png_bytes(16, 16, (10, 200, 10)), content_type="image/png")
    running_thread, running = _in_background(lambda: run_job(pipelined, {"workflow": _sleep_graph(4.0, "pipe/a")}, "a"))
    _until(lambda: _stage(pipelined, "a") == "execute", "the first prompt")
    cancel = threading.Event()
    waiting_thread, waiting = _in_background(lambda: run_job(
        pipelined, _download_job(url, "pipe/b"), "b", cancel=cancel))
    _until(lambda: _stage(pipelined, "b") == "wait", "the second job prepared, waiting for ComfyUI")
    assert _inputs_of(worker, "in.png"), "its input is staged while it waits"
    cancel.set()
    waiting_thread.join(10)

    assert not waiting_thread.is_alive() and waiting["error_type"] == "cancelled", waiting
    assert running_thread.is_alive()  # ...while the first prompt still runs, untouched
    running_thread.join(60)
    assert "error" not in running, running
    assert running["timings"]["execution_ms"] >= 3900  # never interrupted
    assert _inputs_of(worker, "in.png") == []


def test_cancelling_the_executing_job_stops_its_prompt_only_and_the_waiting_job_runs_next(worker, pipelined, media):
    url = media.add("/after-cancel.png", body=png_bytes(16, 16, (200, 10, 10)), content_type="image/png")
    cancel = threading.Event()
    running_thread, running = _in_background(lambda: run_job(
        pipelined, {"workflow": _sleep_graph(30.0, "pipe/cancelled")}, "executing", cancel=cancel))
    _until(lambda: _stage(pipelined, "executing") == "execute", "the first prompt")
    waiting_thread, waiting = _in_background(lambda: run_job(pipelined, _download_job(url, "pipe/next"), "next"))
    _until(lambda: _stage(pipelined, "next") == "wait", "the second job waiting for ComfyUI")
    cancel.set()
    running_thread.join(30)
    waiting_thread.join(60)

    assert running["error_type"] == "cancelled", running
    assert "error" not in waiting, waiting
    assert _near(_pixel(file_bytes(waiting, waiting['outputs'][0])), (55, 245, 245))  # its own input, inverted


def test_a_job_cancelled_while_it_delivers_leaves_the_next_prompt_alone(worker, pipelined, held_s3, s3_server):
    output, proxy, gate = held_s3
    cancel = threading.Event()
    delivering_thread, delivering = _in_background(lambda: run_job(
        pipelined, {"workflow": _fixed_name_job(unique_color(), "pipe-cancel"), "output": output}, "delivering",
        cancel=cancel))
    _until(lambda: proxy.held > 0, "the first job's upload waiting at the gate")
    cancel.set()  # RunPod's cancel reaches the job while its upload is in flight
    color = unique_color()
    nxt = run_job(pipelined, {"workflow": _fixed_name_job(color, "pipe-cancel")}, "after")
    gate.set()
    delivering_thread.join(60)

    assert "error" not in nxt, nxt
    assert _pixel(file_bytes(nxt, nxt["outputs"][0])) == _rgb(color)
    assert not delivering_thread.is_alive()  # it ended (its upload finished or stopped); nothing of it is left
    assert not list((Path(worker.SETTINGS.comfy_path) / "output").glob(".worker-held-*"))
    assert _stage(pipelined, "delivering") is None and pipelined.pipeline.current() == []


def test_a_prepare_that_fails_fails_only_its_job_and_the_job_after_it_still_gets_its_turn(pipelined, media):
    good = media.add("/good.png", body=png_bytes(16, 16, (10, 10, 200)), content_type="image/png")
    running_thread, running = _in_background(lambda: run_job(pipelined, {"workflow": _sleep_graph(3.0, "pipe/r")}, "r"))
    _until(lambda: _stage(pipelined, "r") == "execute", "the first prompt")
    broken = run_job(pipelined, _download_job(f"{media.url}/missing.png", "pipe/broken"), "broken")  # a 404
    assert broken["error_type"] == "input_download" and "404" in broken["error"], broken
    assert running_thread.is_alive()  # failed while the first prompt ran, and left it alone
    third = run_job(pipelined, _download_job(good, "pipe/third"), "third")  # its turn is not held by the failed one
    running_thread.join(60)

    assert "error" not in running, running
    assert running["timings"]["execution_ms"] >= 2900
    assert "error" not in third, third
    assert _near(_pixel(file_bytes(third, third['outputs'][0])), (245, 245, 55))


def test_a_comfyui_frozen_while_the_next_job_downloads_fails_only_the_executing_job(worker, pipelined, media):
    gate = threading.Event()
    url = media.add("/frozen-next.png", body=png_bytes(16, 16, (200, 200, 10)), content_type="image/png", gate=gate)
    process, old_pid = worker.PROCESS, worker.PROCESS.pid
    hung_thread, hung = _in_background(lambda: run_job(
        pipelined, {"workflow": _sleep_graph(30.0, "pipe/frozen"), "timeout_s": 4}, "hung"))
    _until(lambda: _stage(pipelined, "hung") == "execute", "the first prompt")
    next_thread, nxt = _in_background(lambda: run_job(pipelined, _download_job(url, "pipe/thawed"), "next"))
    _until(lambda: media.hits("/frozen-next.png") == 1, "the second job's download")
    try:
        with frozen(old_pid):
            hung_thread.join(40)
    finally:
        gate.set()
    next_thread.join(120)

    assert hung["error_type"] == "comfy_unavailable" and "stopped answering" in hung["error"], hung
    assert process.pid != old_pid  # killed and restarted by the job that held ComfyUI's slot
    assert "error" not in nxt, nxt  # downloaded meanwhile, ran on the new ComfyUI
    assert _near(_pixel(file_bytes(nxt, nxt['outputs'][0])), (55, 55, 245))


def test_a_comfyui_killed_while_the_next_job_downloads_fails_only_the_executing_job(worker, pipelined, media):
    gate = threading.Event()
    url = media.add("/killed-next.png", body=png_bytes(16, 16, (10, 200, 200)), content_type="image/png", gate=gate)
    process, old_pid = worker.PROCESS, worker.PROCESS.pid
    dying_thread, dying = _in_background(lambda: run_job(pipelined, {"workflow": _sleep_graph(30.0, "pipe/killed")}, "dying"))
    _until(lambda: _stage(pipelined, "dying") == "execute", "the first prompt")
    next_thread, nxt = _in_background(lambda: run_job(pipelined, _download_job(url, "pipe/after-kill"), "next"))
    _until(lambda: media.hits("/killed-next.png") == 1, "the second job's download")
    os.kill(old_pid, signal.SIGKILL)
    try:
        dying_thread.join(40)
    finally:
        gate.set()
    next_thread.join(120)

    assert dying["error_type"] == "comfy_unavailable", dying
    assert dying["refresh_worker"] is True  # REFRESH_WORKER_AFTER_CRASH (handler.py gives it to the last job)
    assert "error" not in nxt and "refresh_worker" not in nxt, nxt
    assert process.pid != old_pid and process.is_alive()
    assert _near(_pixel(file_bytes(nxt, nxt['outputs'][0])), (245, 55, 55))


def test_no_more_than_job_concurrency_jobs_hold_inputs_at_once(worker, pipelined, media):
    urls = [media.add(f"/bound-{n}.png", body=png_bytes(16, 16, (10 * n, 10, 10)), content_type="image/png")
            for n in range(3)]
    first_thread, first = _in_background(lambda: run_job(
        pipelined, {**_download_job(urls[0], "pipe/bound0"), "workflow": {
            **_download_job(urls[0], "pipe/bound0")["workflow"],
            "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 3.0}}}}, "bound-0"))
    _until(lambda: _stage(pipelined, "bound-0") == "execute", "the first prompt")
    second_thread, second = _in_background(lambda: run_job(pipelined, _download_job(urls[1], "pipe/bound1"), "bound-1"))
    _until(lambda: _stage(pipelined, "bound-1") == "wait", "the second job prepared")
    third_thread, third = _in_background(lambda: run_job(pipelined, _download_job(urls[2], "pipe/bound2"), "bound-2"))
    time.sleep(1.0)
    assert media.hits("/bound-2.png") == 0  # two jobs on the worker: the third has not started to download
    assert len(pipelined.pipeline.current()) == 2
    for thread in (first_thread, second_thread, third_thread):
        thread.join(60)

    assert all("error" not in r for r in (first, second, third)), (first, second, third)
    assert media.arrivals["/bound-2.png"][0] > media.arrivals["/bound-1.png"][0]
    assert _inputs_of(worker, "in.png") == []


def test_a_job_cancelled_while_it_waits_to_be_admitted_fetches_nothing(pipelined, media):
    url = media.add("/never.png", body=png_bytes(16, 16, (1, 2, 3)), content_type="image/png")
    cancel = threading.Event()
    cancel.set()  # RunPod cancelled it while a cancelled job's thread still held its place
    result = run_job(pipelined, _download_job(url, "pipe/never"), "never", cancel=cancel)
    assert result["error_type"] == "cancelled" and "before it started" in result["error"], result
    assert media.hits("/never.png") == 0 and pipelined.pipeline.current() == []
