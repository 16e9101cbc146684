"""WARMUP_WORKFLOW as the warm-up reads it: inline JSON or a file; a graph or a job input."""

from __future__ import annotations

import json

import pytest

from comfy.worker.warmup import WarmupError, WarmupReport, load_warmup

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def test_inline_graph_becomes_a_job_input():
    assert load_warmup(json.dumps(GRAPH)) == {"workflow": GRAPH}


def test_a_file_with_a_job_input_is_read_as_it_is(tmp_path):
    job = {"workflow": GRAPH, "models": [], "timeout_s": 60}
    (tmp_path / "warmup.json").write_text(json.dumps(job))
    assert load_warmup(str(tmp_path / "warmup.json")) == job


@pytest.mark.parametrize("raw,message", [
    ("{not json", "WARMUP_WORKFLOW is not valid JSON"),
    ("/nowhere/warmup.json", "cannot read the file /nowhere/warmup.json"),
])
def test_unreadable_warmups_are_named(raw, message):
    with pytest.raises(WarmupError, match=message):
        load_warmup(raw)


def test_a_list_is_not_a_workflow(tmp_path):
    (tmp_path / "w.json").write_text("[1, 2]")
    with pytest.raises(WarmupError, match="must be a JSON object"):
        load_warmup(str(tmp_path / "w.json"))


def test_the_report_goes_to_the_first_result_only():
    report = WarmupReport(ran=True, ok=False, duration_ms=1234.5, error="execution_error: boom")
    first = report.add_to_first_result({"error": "x"})
    assert first == {"error": "x", "timings": {"warmup_ms": 1234.5}, "warmup_error": "execution_error: boom"}
    assert report.add_to_first_result({"timings": {"total_ms": 1.0}}) == {"timings": {"total_ms": 1.0}}
    assert WarmupReport().add_to_first_result({"a": 1}) == {"a": 1}  # no warm-up: nothing added
