"""Outputs: removed after delivery, inline limit, and S3 uploads against moto on loopback."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

from tests.conftest import empty_image_graph, file_bytes, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, fetch, s3_client


def output_files(worker) -> list[Path]:
    """Files under output/media/, where every workflow of these tests saves."""
    folder = Path(worker.SETTINGS.comfy_path) / "output" / "media"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def pixels(result: dict, entry: dict) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(file_bytes(result, entry))).convert("RGB").tobytes()


def two_image_graph(color: int) -> dict:
    graph = empty_image_graph("media/s3", 16, 16, color)
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/s3raw"}}
    return graph


def test_outputs_are_removed_and_an_identical_job_still_returns_its_files(worker):
    job = {"workflow": empty_image_graph("media/repeat", 8, 8, unique_color())}

    first = run_handler(worker, job)
    assert "error" not in first, first
    assert output_files(worker) == []
    second = run_handler(worker, job)  # the same prompt: ComfyUI's cache would answer it

    assert "error" not in second, second
    assert len(second["outputs"]) == len(first["outputs"]) == 1
    # Same pixels (the PNG's embedded prompt differs by the per-run mark, so bytes do not).
    assert pixels(second, second["outputs"][0]) == pixels(first, first["outputs"][0])
    assert output_files(worker) == []


def test_the_replaced_inline_limit_is_named_instead_of_ignored(worker, monkeypatch):
    monkeypatch.setenv("INLINE_MAX_BYTES", "50")

    result = run_handler(worker, {"workflow": empty_image_graph("media/big", 32, 32, unique_color())})

    assert result["error_type"] == "invalid_settings"
    assert "INLINE_MAX_BYTES was replaced by RESULT_MAX_BYTES" in result["error"]


def test_s3_from_environment_returns_presigned_urls_with_hashes(worker, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/{s3_bucket}")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)

    result = run_handler(worker, {"workflow": two_image_graph(unique_color()), "task_id": "task-77"}, job_id="job-s3-env")

    assert "error" not in result, result
    assert [o["node_id"] for o in result["outputs"]] == ["3", "4"]
    client = s3_client(s3_server)
    for entry, image in zip(result["outputs"], result["images"]):
        assert "data" not in entry
        assert entry["storage_path"] == f"task-77/media/{entry['filename']}"
        assert entry["bucket"] == s3_bucket and entry["content_type"] == "image/png"
        body = fetch(entry["url"])  # the presigned URL works
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["size_bytes"]
        head = client.head_object(Bucket=s3_bucket, Key=entry["storage_path"])
        assert head["ContentType"] == "image/png" and head["ContentLength"] == entry["size_bytes"]
        assert image == {"filename": entry["filename"], "type": "s3_url", "data": entry["url"]}
    assert output_files(worker) == []


def test_s3_with_per_request_credentials_and_prefix(worker, s3_server, s3_bucket, private_urls_allowed):
    result = run_handler(worker, {
        "workflow": empty_image_graph("media/req", 8, 8, unique_color()),
        "output": {"mode": "s3", "endpoint_url": s3_server, "bucket": s3_bucket, "prefix": "clients/acme",
                   "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET, "url_expiry_s": 600},
    })

    assert "error" not in result, result
    [entry] = result["outputs"]
    assert entry["storage_path"].startswith("clients/acme/media/req_")
    assert "Expires=" in entry["url"] or "X-Amz-Expires=600" in entry["url"]
    assert hashlib.sha256(fetch(entry["url"])).hexdigest() == entry["sha256"]


def test_per_request_endpoint_on_a_private_address_is_refused(worker, s3_server, s3_bucket):
    result = run_handler(worker, {
        "workflow": empty_image_graph("media/req", 8, 8, unique_color()),
        "output": {"mode": "s3", "endpoint_url": s3_server, "bucket": s3_bucket,
                   "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET},
    })

    assert result["error_type"] == "input_url_refused" and "loopback" in result["error"]


def test_missing_bucket_fails_naming_file_and_destination(worker, s3_server, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/no-such-bucket")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)

    result = run_handler(worker, {"workflow": empty_image_graph("media/nobucket", 8, 8, unique_color())})

    assert result["error_type"] == "upload_failed"
    assert "'nobucket_00001_.png'" in result["error"] and "s3 bucket 'no-such-bucket'" in result["error"]
    assert "NoSuchBucket" in result["error"]
    assert result["details"]["file"].startswith("nobucket_") and "no-such-bucket" in result["details"]["destination"]
    assert "1 attempt" in result["error"]  # a missing bucket is not retried
    assert output_files(worker) == []


def test_unreachable_endpoint_is_retried_then_fails(worker, monkeypatch):
    from tests.comfy_env import free_port

    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}/bucket")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("UPLOAD_RETRIES", "1")
    monkeypatch.setenv("RETRY_BACKOFF_S", "0.05")

    result = run_handler(worker, {"workflow": empty_image_graph("media/down", 8, 8, unique_color())})

    assert result["error_type"] == "upload_failed"
    assert "2 attempts" in result["error"] and "127.0.0.1" in result["error"]


def test_big_files_go_up_in_parts_with_the_hash_of_the_whole(s3_server, s3_bucket, tmp_path):
    from comfy.delivery.storage import S3Target, S3Uploader

    data = os.urandom(11 * 1024 * 1024)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    target = S3Target.from_endpoint(f"{s3_server}/{s3_bucket}", None, access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET)
    uploader = S3Uploader(target, url_expiry_s=60, chunk_bytes=5 * 1024 * 1024, concurrency=2, retries=0, backoff_s=0)

    stored = uploader.upload(path, "videos/clip.mp4", "video/mp4")

    head = s3_client(s3_server).head_object(Bucket=s3_bucket, Key="videos/clip.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size_bytes == len(data)
    assert fetch(stored.url) == data
