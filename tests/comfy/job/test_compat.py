"""runpod-workers/worker-comfyui clients switch without changing a request."""

from __future__ import annotations

import asyncio
import base64

from runpod.serverless.modules.rp_job import run_job as sdk_run_job

from tests.conftest import b64, png_bytes, unique_color


def test_worker_comfyui_request_gives_worker_comfyui_shaped_output(worker):
    # The request exactly as worker-comfyui's README shows it: workflow + images (a data URI).
    job = {
        "id": "compat-1",
        "input": {
            "workflow": {
                "3": {"class_type": "LoadImage", "inputs": {"image": "input_image.png"}},
                "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
                "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "ComfyUI"}},
            },
            "images": [{"name": "input_image.png", "image": "data:image/png;base64," + b64(png_bytes(9, 9, (unique_color() % 256, 0, 0)))}],
        },
    }
    result = asyncio.run(sdk_run_job(worker.handler, job))  # what the SDK sends to RunPod

    assert "error" not in result, result
    images = result["output"]["images"]
    assert len(images) == 1
    assert set(images[0]) == {"filename", "type", "data"}
    assert images[0]["type"] == "base64" and images[0]["filename"].startswith("ComfyUI_")
    assert base64.b64decode(images[0]["data"]).startswith(b"\x89PNG")
    # The richer list refers to that entry instead of carrying the bytes a second time.
    [entry] = result["output"]["outputs"]
    assert entry["images_index"] == 0 and entry["delivery"] == "inline" and "data" not in entry
    assert entry["filename"] == images[0]["filename"]


def test_worker_comfyui_clients_see_a_failure_as_error_text(worker):
    job = {"id": "compat-2", "input": {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}}
    result = asyncio.run(sdk_run_job(worker.handler, job))

    assert isinstance(result["error"], str) and "NoSuchNode" in result["error"]
    assert result["output"]["details"][0]["class_type"] == "NoSuchNode"
