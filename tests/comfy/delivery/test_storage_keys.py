"""Every segment of a storage key is checked, wherever it came from: the task id, OUTPUT_PREFIX,
or a subfolder a node wrote to. Nothing is uploaded under a key that could read as another."""

from __future__ import annotations

import pytest

from tests.conftest import empty_image_graph, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, s3_client


@pytest.fixture()
def s3_env(s3_server, s3_bucket, monkeypatch) -> str:
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/{s3_bucket}")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)
    return s3_bucket


def _stored_keys(s3_server: str, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("task_id", ["../other-task/victim", "a/b", "..", "task\u202egnp.exe", "tab\there", "nul\x00"])
def test_a_task_id_that_is_not_one_safe_key_segment_is_refused(worker, s3_server, s3_env, task_id):
    result = run_handler(worker, {"workflow": empty_image_graph("keys/out", color=unique_color()), "task_id": task_id})

    assert result["error_type"] == "invalid_input", result
    assert "task_id" in result["error"] and "cannot name a storage folder" in result["error"]
    assert _stored_keys(s3_server, s3_env) == []


@pytest.mark.parametrize("prefix", ["../x", "runs/../../x", "a//b", "bidi\u202e"])
def test_an_output_prefix_setting_with_a_bad_segment_fails_before_the_run(worker, s3_server, s3_env, monkeypatch, prefix):
    monkeypatch.setenv("OUTPUT_PREFIX", prefix)

    result = run_handler(worker, {"workflow": empty_image_graph("keys/out", color=unique_color())})

    assert result["error_type"] == "output_error", result
    assert "OUTPUT_PREFIX" in result["error"]
    assert "prompt_id" not in result  # refused before anything ran
    assert _stored_keys(s3_server, s3_env) == []


def test_a_subfolder_with_a_bidi_override_is_not_uploaded(worker, s3_server, s3_env):
    workflow = empty_image_graph("keys/ok", color=unique_color())
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "keys/evil\u202egnp/out"}}

    result = run_handler(worker, {"workflow": workflow, "task_id": "task-77"})

    assert result["error_type"] == "output_error", result
    assert "node 4 (SaveImage)" in result["error"] and "U+202E" in result["error"]
    assert _stored_keys(s3_server, s3_env) == []  # not even the good file: never a partial success


def test_good_keys_still_go_under_the_task_id(worker, s3_server, s3_env):
    result = run_handler(worker, {"workflow": empty_image_graph("keys/fine", color=unique_color()), "task_id": "task-78"})

    assert "error" not in result, result
    [key] = _stored_keys(s3_server, s3_env)
    assert key.startswith("task-78/keys/fine_")
