"""Without ComfyUI's folder on this machine, files go through /upload/image and /view."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import time
import urllib.request

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from tests.comfy_env import ROOT, free_port, worker_env
from tests.conftest import b64, file_bytes, png_bytes, unique_color


def test_inputs_are_uploaded_and_outputs_fetched_over_http_when_the_folder_is_unknown(worker):
    settings = dataclasses.replace(worker.SETTINGS, comfy_path=None, comfy_url=worker.SETTINGS.base_url)
    runtime = WorkerRuntime(settings)
    source = png_bytes(12, 10, (unique_color() % 256, 1, 2))
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "remote/in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "remote/out"}},
    }
    try:
        result = run_job(runtime, {"workflow": workflow, "images": [{"name": "remote/in.png", "image": b64(source)}]}, "remote-1")
    finally:
        runtime.shutdown()

    assert "error" not in result, result
    # It went through POST /upload/image, under the job's own name for it.
    [uploaded] = (worker.SETTINGS.comfy_path / "input").glob("in-*-img0-in.png")
    assert uploaded.read_bytes() == source
    [out] = result["outputs"]
    on_disk = worker.SETTINGS.comfy_path / "output" / "remote" / out["filename"]
    assert file_bytes(result, out) == on_disk.read_bytes()  # fetched through /view
    uploaded.unlink()


def test_rp_serve_api_runs_a_job(worker):
    port = free_port()
    env = worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port, COMFY_URL=worker.SETTINGS.base_url)
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "handler.py"), "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        body = json.dumps({"input": {"workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "serve/out"}},
        }}}).encode()
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/runsync", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert answer["status"] == "COMPLETED", answer
    assert len(answer["output"]["images"]) == 1
