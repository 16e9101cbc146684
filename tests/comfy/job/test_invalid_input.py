"""Bad input gets a clear error naming what is wrong; the worker keeps going."""

from __future__ import annotations

import time

import pytest

from tests.conftest import b64, empty_image_graph, png_bytes, run_handler, unique_color


def _assert_worker_still_runs(worker):
    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in result, result


@pytest.mark.parametrize(
    "job_input, expected",
    [
        ("just a string", "job input must be a JSON object, not str"),
        ([1, 2], "job input must be a JSON object, not list"),
        (None, "job input must be a JSON object, not NoneType"),
        ({}, "job input has no 'workflow'"),
        ({"workflow": "{not json"}, "workflow: workflow is a string but not valid JSON"),
        ({"workflow": 42}, "workflow must be an object (API format), not int"),
        ({"workflow": {"1": {"inputs": {}}}}, "node 1: class_type is missing"),
        ({"workflow": empty_image_graph(), "timeout_s": -1}, "timeout_s: Input should be greater than 0"),
        ({"workflow": empty_image_graph(), "surprise": 1}, "surprise: unknown field"),
    ],
)
def test_malformed_input_is_refused_with_the_field_named(worker, job_input, expected):
    result = run_handler(worker, job_input)
    assert result["error_type"] == "invalid_input"
    assert expected in result["error"]


def test_ui_format_export_is_refused_with_advice(worker):
    ui_export = {"last_node_id": 3, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}
    result = run_handler(worker, {"workflow": ui_export})
    assert result["error_type"] == "invalid_input"
    assert "UI format" in result["error"] and "export it in API format" in result["error"]


def test_broken_base64_names_the_image(worker):
    result = run_handler(worker, {
        "workflow": empty_image_graph(),
        "images": [{"name": "good.png", "image": b64(png_bytes())}, {"name": "bad.png", "image": "@@not-base64@@"}],
    })
    assert result["error_type"] == "invalid_input"
    assert "images.1" in result["error"] and "bad.png" in result["error"] and "base64" in result["error"]


def test_data_uri_that_is_not_base64_is_refused(worker):
    result = run_handler(worker, {"workflow": empty_image_graph(), "images": [{"name": "a.png", "image": "data:image/png,abc"}]})
    assert "not base64-encoded" in result["error"]


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "a/../../x.png", "sub\\x.png", "x;rm -rf.png", ".hidden.png", ""])
def test_unsafe_file_names_are_refused(worker, name, tmp_path):
    result = run_handler(worker, {"workflow": empty_image_graph(), "images": [{"name": name, "image": b64(png_bytes())}]})
    assert result["error_type"] == "invalid_input"
    assert "images.0.name" in result["error"]


def test_ten_thousand_images_are_refused_quickly(worker):
    one = b64(png_bytes(2, 2))
    images = [{"name": f"img{i}.png", "image": one} for i in range(10_000)]
    started = time.monotonic()
    result = run_handler(worker, {"workflow": empty_image_graph(), "images": images})
    assert time.monotonic() - started < 5
    assert result["error_type"] == "invalid_input"
    assert "10000 images given; at most 100" in result["error"]
    _assert_worker_still_runs(worker)


def test_duplicate_image_names_are_refused(worker):
    image = {"name": "same.png", "image": b64(png_bytes())}
    result = run_handler(worker, {"workflow": empty_image_graph(), "images": [image, image]})
    assert "given twice" in result["error"]


def test_video_url_without_node_is_refused(worker):
    result = run_handler(worker, {"workflow": empty_image_graph(), "video_url": "https://example.com/a.mp4"})
    assert "video_node_id" in result["error"]


def test_video_node_that_is_not_in_the_workflow_is_refused(worker):
    result = run_handler(worker, {
        "workflow": empty_image_graph(), "video_url": "https://example.com/a.mp4", "video_node_id": 99,
    })
    assert "video_node_id '99' is not a node of the workflow" in result["error"]
