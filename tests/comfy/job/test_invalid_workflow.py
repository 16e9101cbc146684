"""Graphs that cannot run are refused before queueing, with every problem listed."""

from __future__ import annotations

import dataclasses
import uuid

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from tests.conftest import empty_image_graph, run_handler, unique_color


def test_every_problem_is_listed_with_node_and_class(worker):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 8, "batch_size": 1}},
        "2": {"class_type": "NoSuchNode", "inputs": {}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["1", 3]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    result = run_handler(worker, {"workflow": workflow})

    assert result["error_type"] == "invalid_workflow"
    problems = {(p["node_id"], p["class_type"], p["input_name"]): p["message"] for p in result["details"]}
    assert problems[("1", "EmptyImage", "width")] == "expected INT, got 'wide'"
    assert problems[("1", "EmptyImage", "color")] == "required input is missing"
    assert "unknown node class 'NoSuchNode'" in problems[("2", "NoSuchNode", None)]
    assert problems[("3", "ImageInvert", "image")] == "linked to node 7, which is not in the workflow"
    assert "has 1 output(s)" in problems[("4", "ImageInvert", "image")]
    assert problems[("5", "SaveImage", "filename_prefix")] == "required input is missing"
    assert "6 problem(s)" in result["error"]


def test_a_link_of_the_wrong_type_is_refused(worker):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    result = run_handler(worker, {"workflow": workflow})
    assert result["error_type"] == "invalid_workflow"
    assert "expects IMAGE but node 2 (CreateVideo) output 0 gives VIDEO" in result["error"]


def test_a_value_out_of_range_is_refused(worker):
    workflow = empty_image_graph()
    workflow["1"]["inputs"]["width"] = 0
    result = run_handler(worker, {"workflow": workflow})
    assert "0 is below the minimum 1" in result["error"]


def test_no_output_node_is_refused(worker):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    }
    result = run_handler(worker, {"workflow": workflow})
    assert result["error_type"] == "invalid_workflow"
    assert "no output node" in result["error"]


def test_comfyui_400_comes_back_with_its_node_errors(worker):
    # A missing input file passes the graph check (file lists are ComfyUI's to check).
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "never-uploaded.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    result = run_handler(worker, {"workflow": workflow})

    assert result["error_type"] == "prompt_rejected"
    [node_error] = result["details"]["node_errors"]
    assert node_error["node_id"] == "1" and node_error["class_type"] == "LoadImage"
    assert "never-uploaded.png" in node_error["details"]
    assert "node 1 (LoadImage)" in result["error"]


def test_the_worker_runs_normally_after_refusals(worker):
    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in result, result


def test_an_attached_comfyui_that_gained_a_node_class_is_asked_again_before_refusing_it(worker):
    settings = dataclasses.replace(worker.SETTINGS, comfy_url=worker.SETTINGS.base_url)
    runtime = WorkerRuntime(settings)
    late = f"TestLateNode{uuid.uuid4().hex[:8]}"
    try:
        assert late not in runtime.client.object_info()  # cached now, without it
        # ComfyUI gains the class (as after a restart with a new custom node); the worker's cache does not.
        added = run_job(runtime, {"workflow": {"1": {"class_type": "TestRegisterClass", "inputs": {"name": late}}}}, "add")
        assert "error" not in added, added
        assert late not in runtime.client.object_info()

        result = run_job(runtime, {"workflow": {"1": {"class_type": late, "inputs": {"text": "late"}}}}, "use")
    finally:
        runtime.shutdown()

    assert "error" not in result, result
    assert [o["text"] for o in result["outputs"]] == ["late", "LATE"]


def test_a_class_that_is_still_unknown_after_asking_again_is_refused(worker):
    result = run_handler(worker, {"workflow": {"1": {"class_type": "NeverInstalled", "inputs": {}}}})

    assert result["error_type"] == "invalid_workflow"
    assert "unknown node class 'NeverInstalled'" in result["error"]
