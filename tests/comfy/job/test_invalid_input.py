"""Bad input gets a clear error naming what is wrong; the worker keeps going."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import pytest

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
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


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _cycle_graph() -> dict:
    graph = empty_image_graph(color=unique_color())
    graph["1"]["inputs"]["width"] = ["3", 0]  # EmptyImage <- SaveImage <- ImageInvert <- EmptyImage
    graph["2"]["inputs"]["image"] = ["1", 0]
    return graph


@pytest.mark.parametrize(
    "job_input, expected",
    [
        ({"workflow": {"1": {"class_type": "EmptyImage", "inputs": _nested(100_000)}}},
         "workflow.1.inputs.x.x"),
        ({"workflow": "[" * 100_000 + "]" * 100_000}, "workflow is nested deeper than 64 levels"),
        ({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": float("nan")}}}},
         "workflow.1.inputs.width: nan is not a number JSON allows"),
        ({"workflow": '{"1": {"class_type": "EmptyImage", "inputs": {"width": Infinity}}}'},
         "workflow.1.inputs.width: inf is not a number JSON allows"),
        ({"workflow": empty_image_graph(), "timeout_s": float("inf")}, "timeout_s: inf is not a number JSON allows"),
        ({"workflow": {"²": {"class_type": "EmptyImage", "inputs": {}}}}, "node id '²'"),
        ({"workflow": {"a b": {"class_type": "EmptyImage", "inputs": {}}}}, "node id 'a b'"),
        ({"workflow": _cycle_graph()}, "nodes 1 -> 3 -> 2 -> 1 form a cycle"),
    ],
    ids=["nested-1e5", "nested-1e5-json-string", "nan", "infinity-in-json-string", "infinite-timeout",
         "superscript-node-id", "node-id-with-space", "cycle"],
)
def test_hostile_shapes_are_invalid_input_naming_the_problem(worker, job_input, expected):
    started = time.monotonic()
    result = run_handler(worker, job_input)

    assert result["error_type"] == "invalid_input", result
    assert expected in result["error"]
    assert time.monotonic() - started < 5


def test_an_image_over_max_input_bytes_is_refused_before_it_is_decoded(worker, monkeypatch):
    monkeypatch.setenv("MAX_INPUT_BYTES", "1000")
    images = [{"name": "small.png", "image": b64(png_bytes(2, 2))},
              {"name": "big.png", "image": "data:image/png;base64," + b64(b"\0" * 1001)}]

    result = run_handler(worker, {"workflow": empty_image_graph(), "images": images})

    assert result["error_type"] == "input_too_large", result
    assert "images.1 ('big.png') is 1001 bytes, larger than MAX_INPUT_BYTES (1000 bytes)" in result["error"]
    _assert_worker_still_runs(worker)


@pytest.fixture()
def read_only_input_folder(worker, tmp_path):
    """A COMFY_PATH whose input/ is on a read-only file system (a tmpfs mounted ro), for an
    attached runtime; falls back to a folder the kernel refuses writes to (sysfs)."""
    comfy_path = tmp_path / "ComfyUI"
    for folder in ("output", "temp", "input"):
        (comfy_path / folder).mkdir(parents=True)
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(comfy_path / "input")],
                                 capture_output=True).returncode == 0
    if not mounted:
        (comfy_path / "input").rmdir()
        (comfy_path / "input").symlink_to("/sys/fs")
    try:
        yield comfy_path
    finally:
        if mounted:
            subprocess.run(["umount", str(comfy_path / "input")], check=True)


def test_a_read_only_input_folder_is_named_as_the_workers_fault(worker, read_only_input_folder):
    settings = dataclasses.replace(worker.SETTINGS, comfy_path=read_only_input_folder,
                                   comfy_url=worker.SETTINGS.base_url)
    runtime = WorkerRuntime(settings)
    try:
        result = run_job(runtime, {"workflow": empty_image_graph(),
                                   "images": [{"name": "a.png", "image": b64(png_bytes())}]}, "read-only")
        media = run_job(runtime, {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                                               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}},
                                  "inputs": [{"node": "1", "field": "image", "base64": b64(png_bytes())}]}, "read-only-2")
    finally:
        runtime.shutdown()

    assert result["error_type"] == "input_write_failed", result
    assert "could not write image 'a.png' into ComfyUI's input folder" in result["error"]
    assert media["error_type"] == "input_write_failed", media
    assert "the input for node 1 field 'image'" in media["error"]
