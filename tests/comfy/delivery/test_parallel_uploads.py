"""Many outputs go up several at a time, still all or nothing, in the order ComfyUI listed them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from comfy.delivery.deliver import deliver_to_storage
from comfy.delivery.outputs import OutputFile, OutputKind
from comfy.delivery.storage import S3Target, S3Uploader, UploadFailed
from tests.conftest import run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, fetch, s3_client

MIB = 1024 * 1024


def uploader_for(s3_server: str, bucket: str) -> S3Uploader:
    target = S3Target.from_endpoint(f"{s3_server}/{bucket}", None, access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET)
    return S3Uploader(target, url_expiry_s=60, chunk_bytes=5 * MIB, concurrency=4, retries=0, backoff_s=0)


def output_file(path: Path, size: int | None = None) -> OutputFile:
    return OutputFile(node_id="9", class_type="SaveImage", key="images", kind=OutputKind.IMAGE, filename=path.name,
                      content_type="image/png", size_bytes=path.stat().st_size if size is None else size, path=path)


def keys_in(s3_server: str, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket=bucket).get("Contents", []))


def test_small_and_large_files_all_arrive_and_are_reported_in_order(s3_server, s3_bucket, tmp_path):
    sizes = [20_000] * 12 + [11 * MIB] + [30_000] * 3  # a big file among the frames
    items = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"frame_{index:03d}.png"
        path.write_bytes(os.urandom(size))
        items.append(output_file(path))

    result = deliver_to_storage(items, uploader_for(s3_server, s3_bucket), "job-1/", "s3",
                                small_file_bytes=5 * MIB, parallel=4)

    assert [o["filename"] for o in result["outputs"]] == [i.filename for i in items]
    assert [i["filename"] for i in result["images"]] == [i.filename for i in items]
    for item, entry in zip(items, result["outputs"]):
        assert entry["storage_path"] == f"job-1/{item.filename}"
        assert entry["sha256"] == hashlib.sha256(item.path.read_bytes()).hexdigest()
    assert fetch(result["outputs"][12]["url"]) == items[12].path.read_bytes()
    head = s3_client(s3_server).head_object(Bucket=s3_bucket, Key="job-1/frame_012.png")
    assert head["ETag"].strip('"').endswith("-3")  # the big one went up in parts
    assert len(keys_in(s3_server, s3_bucket)) == len(sizes)


@pytest.mark.parametrize("failing_index", [5, 12])  # among the small files; the big one
def test_one_failure_among_many_takes_back_every_upload(s3_server, s3_bucket, tmp_path, failing_index):
    items = []
    for index in range(16):
        path = tmp_path / f"frame_{index:03d}.png"
        path.write_bytes(os.urandom(11 * MIB if index == 12 else 20_000))
        items.append(output_file(path))
    items[failing_index].path.unlink()  # gone before delivery: a real failure for that one file

    with pytest.raises(UploadFailed) as caught:
        deliver_to_storage(items, uploader_for(s3_server, s3_bucket), "job-2/", "s3",
                           small_file_bytes=5 * MIB, parallel=4)

    assert f"frame_{failing_index:03d}.png" in caught.value.message and s3_bucket in caught.value.message
    assert caught.value.details["file"] == f"frame_{failing_index:03d}.png"
    assert keys_in(s3_server, s3_bucket) == []  # never a partial success


def test_a_batch_from_comfyui_goes_to_s3_whole(worker, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/{s3_bucket}")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 6, "color": unique_color()}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/batch"}},
    }

    result = run_handler(worker, {"workflow": workflow}, job_id="batch-job")

    assert "error" not in result, result
    assert [o["filename"] for o in result["outputs"]] == [f"batch_{n:05d}_.png" for n in range(1, 7)]
    assert keys_in(s3_server, s3_bucket) == [f"batch-job/media/batch_{n:05d}_.png" for n in range(1, 7)]
    for entry in result["outputs"]:
        assert hashlib.sha256(fetch(entry["url"])).hexdigest() == entry["sha256"]
