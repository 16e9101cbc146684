"""Files into any node's field, through the real handler and the real CPU ComfyUI."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

from PIL import Image

from comfy.media.staging import stage_inputs
from comfy.job.input import parse_job_input
from comfy.media.settings import MediaSettings
from tests.conftest import b64, file_bytes, png_bytes, run_handler, unique_color


def invert_graph(prefix: str = "media/inverted") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def video_frames_graph(load_field_value: str = "placeholder.mp4") -> dict:
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": load_field_value}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "media/frames"}},
    }


def decoded_image(result: dict, entry: dict) -> Image.Image:
    return Image.open(io.BytesIO(file_bytes(result, entry))).convert("RGB")


def staged_input_files(worker) -> list[Path]:
    return [p for p in (Path(worker.SETTINGS.comfy_path) / "input").iterdir() if p.name.startswith(("in-", ".in-"))]


def test_image_url_into_load_image(worker, media_server, private_urls_allowed):
    color = (unique_color() % 200, 40, 90)
    url = media_server.add("/pics/cat.png", body=png_bytes(20, 12, color), content_type="image/png")

    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "url": url}]})

    assert "error" not in result, result
    [entry] = result["outputs"]
    image = decoded_image(result, entry)
    assert image.size == (20, 12)
    assert all(abs(a - (255 - b)) <= 1 for a, b in zip(image.getpixel((0, 0)), color))
    assert staged_input_files(worker) == []  # the per-job input is gone after the job


def test_mp4_url_into_load_video(worker, media_server, private_urls_allowed, mp4_bytes):
    url = media_server.add("/clip.mp4", body=mp4_bytes, content_type="video/mp4")

    result = run_handler(worker, {
        "workflow": video_frames_graph(), "inputs": [{"node": "1", "field": "file", "url": url, "kind": "video"}],
    })

    assert "error" not in result, result
    assert len(result["outputs"]) == 3  # the three frames ComfyUI wrote into the mp4
    assert decoded_image(result, result["outputs"][0]).size == (64, 64)


def test_seed_params_shape_video_url_node_and_field(worker, media_server, private_urls_allowed, mp4_bytes):
    url = media_server.add("/seed/input.mp4", body=mp4_bytes, content_type="video/mp4")

    result = run_handler(worker, {
        "workflow": video_frames_graph("input.mp4"),
        "video_url": url, "video_node_id": "1", "video_input_field": "file",
    })

    assert "error" not in result, result
    assert len(result["outputs"]) == 3
    assert media_server.hits("/seed/input.mp4") == 1


def test_redirect_is_followed(worker, media_server, private_urls_allowed):
    target = media_server.add("/real.png", body=png_bytes(9, 7), content_type="image/png")
    start = media_server.add("/go", status=302, location=target)

    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": 1, "field": "image", "url": start}]})

    assert "error" not in result, result
    assert decoded_image(result, result["outputs"][0]).size == (9, 7)
    assert media_server.hits("/go") == 1 and media_server.hits("/real.png") == 1


def test_404_fails_naming_host_and_status_without_retrying(worker, media_server, private_urls_allowed):
    url = media_server.add("/gone.png", status=404, body=b"no")

    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "url": url}]})

    assert result["error_type"] == "input_download"
    assert "127.0.0.1" in result["error"] and "404" in result["error"]
    assert media_server.hits("/gone.png") == 1
    assert staged_input_files(worker) == []


def test_5xx_is_retried_until_it_works(worker, media_server, private_urls_allowed):
    url = media_server.add("/busy.png", body=png_bytes(5, 5), content_type="image/png", fail_first=2)

    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "url": url}]})

    assert "error" not in result, result
    assert media_server.hits("/busy.png") == 3


def test_slow_server_times_out_with_a_clear_error(worker, media_server, private_urls_allowed, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_READ_TIMEOUT_S", "0.5")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "1")
    url = media_server.add("/slow.png", body=png_bytes(), content_type="image/png", stall_after_headers_s=5)

    started = time.monotonic()
    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "url": url}]})

    assert result["error_type"] == "input_download"
    assert "127.0.0.1" in result["error"] and "read timeout" in result["error"] and "2 attempts" in result["error"]
    assert time.monotonic() - started < 4  # two 0.5 s timeouts, not the server's 5 s stall


def test_oversize_declared_length_is_refused_before_the_body(worker, media_server, private_urls_allowed, monkeypatch):
    monkeypatch.setenv("MAX_INPUT_BYTES", "1000")
    # Claims 5 GB and then stalls: only a refusal on the header can end this quickly.
    url = media_server.add("/huge.mp4", body=b"x" * 10, declared_length=5 * 10**9, stall_after_headers_s=30)

    started = time.monotonic()
    result = run_handler(worker, {"workflow": video_frames_graph(), "inputs": [{"node": "1", "field": "file", "url": url}]})

    assert result["error_type"] == "input_too_large"
    assert "MAX_INPUT_BYTES" in result["error"] and "127.0.0.1" in result["error"] and "5000000000" in result["error"]
    assert time.monotonic() - started < 5
    assert media_server.hits("/huge.mp4") == 1  # not retried


def test_oversize_stream_without_length_is_cut_off(worker, media_server, private_urls_allowed, monkeypatch):
    monkeypatch.setenv("MAX_INPUT_BYTES", str(3 * 1024 * 1024))
    url = media_server.add("/endless.bin", endless_chunk=b"\0" * 65536)

    result = run_handler(worker, {"workflow": video_frames_graph(), "inputs": [{"node": "1", "field": "file", "url": url}]})

    assert result["error_type"] == "input_too_large"
    assert "127.0.0.1" in result["error"]
    assert staged_input_files(worker) == []  # no partial file left behind


def test_base64_and_data_uri_inputs(worker):
    left, right = png_bytes(6, 6, (250, 0, 0)), png_bytes(6, 6, (0, 0, 250))
    workflow = invert_graph()
    workflow["4"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "media/plain"}}

    result = run_handler(worker, {"workflow": workflow, "inputs": [
        {"node": "1", "field": "image", "base64": b64(left)},
        {"node": "4", "field": "image", "data_uri": "data:image/png;base64," + b64(right), "name": "right.png"},
    ]})

    assert "error" not in result, result
    by_node = {o["node_id"]: decoded_image(result, o).getpixel((0, 0)) for o in result["outputs"]}
    assert set(by_node) == {"3", "5"}
    assert all(abs(a - b) <= 1 for a, b in zip(by_node["3"], (5, 255, 255)))  # inverted red
    assert all(abs(a - b) <= 1 for a, b in zip(by_node["5"], (0, 0, 250)))  # blue as given


def test_missing_node_is_a_clear_error(worker):
    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "42", "field": "image", "base64": b64(png_bytes())}]})

    assert result["error_type"] == "invalid_input"
    assert "node '42' is not a node of the workflow" in result["error"]


def test_missing_field_is_a_clear_error_listing_the_nodes_inputs(worker):
    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "picture", "base64": b64(png_bytes())}]})

    assert result["error_type"] == "invalid_input"
    assert "node 1 (LoadImage) has no input 'picture'" in result["error"] and "image" in result["error"]


def test_a_linked_field_cannot_be_replaced_by_a_file(worker):
    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "2", "field": "image", "base64": b64(png_bytes())}]})

    assert result["error_type"] == "invalid_input"
    assert "linked to node 1" in result["error"]


def test_names_are_unique_per_job(worker):
    payload = {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "base64": b64(png_bytes()), "name": "same.png"}]}
    first, second = parse_job_input(payload), parse_job_input(payload)
    runtime = worker.RUNTIME
    staged_first = stage_inputs(first.images, first.inputs, first.workflow, runtime.settings, runtime.client, MediaSettings())
    staged_second = stage_inputs(second.images, second.inputs, second.workflow, runtime.settings, runtime.client, MediaSettings())
    try:
        name_first = first.workflow["1"]["inputs"]["image"]
        name_second = second.workflow["1"]["inputs"]["image"]
        assert name_first != name_second
        assert name_first.endswith("same.png") and name_second.endswith("same.png")
        assert all(p.exists() for p in staged_first.paths + staged_second.paths)
    finally:
        staged_first.cleanup()
        staged_second.cleanup()
    assert not any(p.exists() for p in staged_first.paths + staged_second.paths)
