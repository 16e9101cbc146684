"""Video outputs delivered to storage come with a poster: their first frame as a JPEG."""

from __future__ import annotations

import hashlib
import io
import logging
import sys

from PIL import Image

from comfy.delivery.poster import make_poster
from tests.conftest import file_bytes, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, fetch, s3_client


def video_graph(color: int, prefix: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": color}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": prefix,
                                                    "format": "mp4", "codec": "h264"}},
    }


def use_s3(monkeypatch, s3_server: str, bucket: str) -> None:
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/{bucket}")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)


def test_a_video_in_storage_gets_a_poster_of_its_first_frame(worker, s3_server, s3_bucket, monkeypatch):
    use_s3(monkeypatch, s3_server, s3_bucket)
    color = unique_color()

    result = run_handler(worker, {"workflow": video_graph(color, "media/poster")})

    assert "error" not in result, result
    [video] = result["outputs"]
    poster = video["poster"]
    assert poster["content_type"] == "image/jpeg"
    assert poster["storage_path"] == video["storage_path"] + ".poster.jpg"
    data = fetch(poster["url"])
    assert hashlib.sha256(data).hexdigest() == poster["sha256"] and len(data) == poster["size_bytes"]
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (64, 48)
    expected = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    assert all(abs(a - b) <= 16 for a, b in zip(image.getpixel((32, 24)), expected)), (image.getpixel((32, 24)), expected)
    head = s3_client(s3_server).head_object(Bucket=s3_bucket, Key=poster["storage_path"])
    assert head["ContentType"] == "image/jpeg"


def test_posters_can_be_turned_off_per_job(worker, s3_server, s3_bucket, monkeypatch):
    use_s3(monkeypatch, s3_server, s3_bucket)

    result = run_handler(worker, {"workflow": video_graph(unique_color(), "media/noposter"),
                                  "output": {"mode": "s3", "poster": False}}, job_id="no-poster")

    assert "error" not in result, result
    assert "poster" not in result["outputs"][0]
    keys = [o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == [result["outputs"][0]["storage_path"]]


def test_inline_videos_have_no_poster(worker):
    result = run_handler(worker, {"workflow": video_graph(unique_color(), "media/inline-video")})

    assert "error" not in result, result
    assert "poster" not in result["outputs"][0] and file_bytes(result, result["outputs"][0])


def test_no_poster_for_a_file_that_is_not_a_video(worker, tmp_path, caplog):
    not_video = tmp_path / "fake.mp4"
    not_video.write_bytes(b"not a video at all")

    with caplog.at_level(logging.WARNING, logger="comfy.delivery.poster"):
        made = make_poster(not_video, tmp_path / "poster.jpg", worker.SETTINGS.comfy_python)

    assert made is None and not (tmp_path / "poster.jpg").exists()
    assert "no poster for fake.mp4" in caplog.text


def test_no_poster_from_an_interpreter_without_pyav(tmp_path, caplog, mp4_bytes):
    video = tmp_path / "clip.mp4"
    video.write_bytes(mp4_bytes)

    with caplog.at_level(logging.WARNING, logger="comfy.delivery.poster"):
        made = make_poster(video, tmp_path / "poster.jpg", sys.executable)  # the worker's own venv: no PyAV

    assert made is None and "has no PyAV" in caplog.text
