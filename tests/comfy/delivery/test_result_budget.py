"""RESULT_MAX_BYTES through the real handler and the SDK's own run_job: what RunPod would receive.

Every shape of output (one big file, thousands of small files, large text) stays within the
budget: it fits inline, the largest outputs go to storage when storage is configured, or the
job fails with `output_too_large` saying how to configure storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest
from runpod.serverless.modules.rp_job import run_job as sdk_run_job

from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, SERVICE_KEY, fetch, s3_client
from tests.comfy.delivery.test_outputs_s3 import output_files
from tests.conftest import file_bytes, unique_color

pytestmark = pytest.mark.comfy


def noise_graph(prefix: str, size: int, seed: int) -> dict:
    """A noisy size x size PNG (hardly compressible: about 1.8 bytes a pixel), made without inputs."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x808080}},
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": seed, "strength": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def mixed_graph(prefix: str, noise_size: int, text: str = "caption", text_repeat: int = 1) -> dict:
    graph = noise_graph(f"{prefix}-big", noise_size, uuid.uuid4().int % 2**32)
    graph["4"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}}
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"{prefix}-small"}}
    graph["6"] = {"class_type": "TestTextOutput", "inputs": {"text": text, "repeat": text_repeat}}
    return graph


def through_the_sdk(worker, job_input: dict) -> tuple[dict, int]:
    """(the SDK's run_job result, the bytes the SDK would post: json.dumps(..., ensure_ascii=False))."""
    result = asyncio.run(sdk_run_job(worker.handler, {"id": f"budget-{uuid.uuid4().hex[:8]}", "input": job_input}))
    return result, len(json.dumps(result, ensure_ascii=False).encode())


def use_s3(monkeypatch, s3_server, bucket) -> None:
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/{bucket}")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)


def test_one_big_file_without_storage_fails_with_output_too_large(worker, monkeypatch):
    monkeypatch.setenv("RESULT_MAX_BYTES", "65536")

    result, posted = through_the_sdk(worker, {"workflow": noise_graph("media/big", 256, 1)})

    assert result["output"]["error_type"] == "output_too_large"
    message = result["error"]
    assert "RESULT_MAX_BYTES (65536)" in message and "BUCKET_ENDPOINT_URL" in message and "SUPABASE_URL" in message
    details = result["output"]["details"]
    assert details["result_bytes"] > 65536 and details["result_max_bytes"] == 65536
    assert details["largest_outputs"][0]["filename"].startswith("big_")
    assert posted < 4096  # the error, not the file
    assert output_files(worker) == []


def test_over_budget_the_largest_file_goes_to_s3_and_the_rest_stay_inline(worker, s3_server, s3_bucket, monkeypatch):
    use_s3(monkeypatch, s3_server, s3_bucket)
    monkeypatch.setenv("OUTPUT_MODE", "inline")  # storage configured, inline asked for
    monkeypatch.setenv("RESULT_MAX_BYTES", "65536")

    result, posted = through_the_sdk(worker, {"workflow": mixed_graph("media/mix", 256), "task_id": "t-spill"})

    assert "error" not in result, result
    output = result["output"]
    assert posted <= 65536
    big, small, *texts = output["outputs"]
    assert big["delivery"] == "s3" and big["storage_path"] == f"t-spill/media/{big['filename']}"
    assert output["images"][big["images_index"]] == {"filename": big["filename"], "type": "s3_url", "data": big["url"]}
    body = fetch(big["url"])
    assert len(body) == big["size_bytes"] > 65536 and hashlib.sha256(body).hexdigest() == big["sha256"]
    assert small["delivery"] == "inline" and file_bytes(output, small).startswith(b"\x89PNG")
    assert [t["text"] for t in texts] == ["caption", "CAPTION"] and {t["delivery"] for t in texts} == {"inline"}
    assert output["delivery"] == {"inline_files": 1, "stored_files": 1, "storage": "s3", "result_max_bytes": 65536}
    assert all(set(image) == {"filename", "type", "data"} for image in output["images"])
    assert output_files(worker) == []


def test_over_budget_to_supabase_without_s3_keys_a_big_file_goes_up_resumably(worker, storage_api, monkeypatch):
    monkeypatch.setenv("SUPABASE_URL", storage_api.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    monkeypatch.setenv("SUPABASE_STORAGE_BUCKET", "outputs")

    # 2048 x 2048 noise: about 7.5 MB (10 MB of base64), over the default budget and over TUS's 6 MB chunk
    result, posted = through_the_sdk(worker, {"workflow": mixed_graph("media/tus", 2048), "output": {"mode": "inline"}})

    assert "error" not in result, result
    output = result["output"]
    assert posted <= 9_000_000
    big, small = output["outputs"][:2]
    assert big["delivery"] == "supabase" and small["delivery"] == "inline"
    stored = storage_api.state.objects[("outputs", big["storage_path"])]
    assert len(stored.data) == big["size_bytes"] > 6 * 1024 * 1024
    assert hashlib.sha256(stored.data).hexdigest() == big["sha256"]
    assert storage_api.state.patch_sizes[0] == 6 * 1024 * 1024  # resumable, in 6 MB chunks
    assert storage_api.state.upload_calls == 0
    assert output["images"][big["images_index"]]["type"] == "supabase_url"
    assert fetch(big["url"]) == stored.data


def test_thousands_of_small_files_count_their_metadata_too(worker, monkeypatch):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 2000, "color": unique_color()}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/many"}},
    }
    monkeypatch.setenv("RESULT_MAX_BYTES", "4000000")

    result, posted = through_the_sdk(worker, {"workflow": workflow})

    assert "error" not in result, result
    assert len(result["output"]["outputs"]) == 2000 and posted <= 4_000_000
    base64_bytes = sum(len(image["data"]) for image in result["output"]["images"])
    assert base64_bytes < posted

    # A budget the files' base64 fits but their 4000 entries do not: refused, not sent over
    between = (base64_bytes + posted) // 2
    monkeypatch.setenv("RESULT_MAX_BYTES", str(between))
    workflow["1"]["inputs"]["color"] = unique_color()
    refused, _ = through_the_sdk(worker, {"workflow": workflow})

    assert refused["output"]["error_type"] == "output_too_large"
    # the estimate is the real size (file sizes differ by a few bytes: ComfyUI embeds the prompt)
    assert between < refused["output"]["details"]["result_bytes"] <= posted * 1.01
    assert output_files(worker) == []


def test_a_large_text_counts_and_goes_to_storage_as_a_text_file(worker, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("RESULT_MAX_BYTES", "262144")
    graph = {"6": {"class_type": "TestTextOutput", "inputs": {"text": "ünïcode line\n", "repeat": 30000}}}

    refused, _ = through_the_sdk(worker, {"workflow": graph})
    assert refused["output"]["error_type"] == "output_too_large"

    use_s3(monkeypatch, s3_server, s3_bucket)
    monkeypatch.setenv("OUTPUT_MODE", "inline")
    graph["6"]["inputs"]["text"] = "ünïcode line, again\n"
    result, posted = through_the_sdk(worker, {"workflow": graph})

    assert "error" not in result, result
    assert posted <= 262144
    entries = result["output"]["outputs"]
    assert [e["delivery"] for e in entries] == ["s3", "s3"] and all("text" not in e for e in entries)
    assert fetch(entries[0]["url"]).decode("utf-8") == "ünïcode line, again\n" * 30000
    assert entries[0]["content_type"] == "text/plain; charset=utf-8" and entries[0]["storage_path"].endswith(".txt")
    assert result["output"]["images"] == []  # texts are not files: images[] stays worker-comfyui's list of files


def test_storage_mode_fails_before_uploading_when_even_the_urls_would_not_fit(worker, s3_server, s3_bucket, monkeypatch):
    use_s3(monkeypatch, s3_server, s3_bucket)
    monkeypatch.setenv("RESULT_MAX_BYTES", "65536")
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 300, "color": unique_color()}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/urls"}},
    }

    result, _ = through_the_sdk(worker, {"workflow": workflow})

    assert result["output"]["error_type"] == "output_too_large"
    assert "every output in storage" in result["error"] and "RESULT_MAX_BYTES (65536)" in result["error"]
    assert s3_client(s3_server).list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert output_files(worker) == []
