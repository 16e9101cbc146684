"""The RunPod Hub files: shapes from ../shared/notes/runpod.md, settings the worker really reads."""

from __future__ import annotations

import json
from pathlib import Path

from comfy.settings import _ENV_VARS, FreeAfterJob, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())
VAR_TO_ATTR = {var: attr for attr, (var, _) in _ENV_VARS.items()}


def test_hub_json_has_the_listing_fields():
    assert HUB["type"] == "serverless" and HUB["title"] and HUB["description"] and HUB["category"]
    config = HUB["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1 and config["containerDiskInGb"] >= 30
    assert config["allowedCudaVersions"] == ["13.0"]  # the image's CUDA base (Dockerfile CUDA_IMAGE)


def test_every_hub_env_entry_is_a_worker_setting_with_its_real_default():
    defaults = WorkerSettings()
    for entry in HUB["config"]["env"]:
        key, field = entry["key"], entry["input"]
        assert key in VAR_TO_ATTR, f"{key} is not read by comfy/settings.py"
        expected = getattr(defaults, VAR_TO_ATTR[key])
        if isinstance(expected, FreeAfterJob):
            expected = expected.value
            assert expected in [option["value"] for option in field["options"]]
        if isinstance(expected, tuple):
            expected = " ".join(expected)
        assert field["default"] == expected, key
        assert field["type"] in ("string", "number", "boolean", "select") and field["name"] and field["description"]


def test_hub_env_has_no_duplicates():
    keys = [entry["key"] for entry in HUB["config"]["env"]]
    assert len(keys) == len(set(keys))


def test_tests_json_runs_test_input_json_which_needs_no_weights():
    test_input = json.loads((ROOT / "test_input.json").read_text())
    [hub_test] = TESTS["tests"]
    assert hub_test["input"] == test_input["input"] and hub_test["timeout"] > 0 and hub_test["name"]
    classes = {node["class_type"] for node in hub_test["input"]["workflow"].values()}
    assert not any("Checkpoint" in cls or "Loader" in cls for cls in classes)
    config = TESTS["config"]
    assert config["gpuCount"] == 1 and config["gpuTypeId"]
    assert all(entry["key"] in VAR_TO_ATTR for entry in config["env"])
