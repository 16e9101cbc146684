"""The RunPod Hub files: shapes from ../shared/notes/runpod.md, settings the worker really reads."""

from __future__ import annotations

import json
from pathlib import Path

from comfy.media.settings import ENV_VARS as MEDIA_ENV_VARS
from comfy.media.settings import MediaSettings
from comfy.models.settings import ENV_VARS as MODEL_ENV_VARS
from comfy.models.settings import ModelSettings
from comfy.settings import _ENV_VARS, FreeAfterJob, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())
VAR_TO_ATTR = {var: attr for attr, (var, _) in _ENV_VARS.items()}
MEDIA_VAR_TO_ATTR = {var: attr for attr, var in MEDIA_ENV_VARS.items()}
MODEL_VAR_TO_ATTR = {var: attr for attr, var in MODEL_ENV_VARS.items()}


def real_default(key: str) -> object:
    """The default the worker uses when the variable is unset ("" for an unset optional one)."""
    if key in VAR_TO_ATTR:
        value = getattr(WorkerSettings(), VAR_TO_ATTR[key])
    elif key in MODEL_VAR_TO_ATTR:
        value = ModelSettings.model_fields[MODEL_VAR_TO_ATTR[key]].default
    else:
        assert key in MEDIA_VAR_TO_ATTR, f"{key} is read by neither comfy/settings.py nor comfy/media/settings.py"
        value = MediaSettings.model_fields[MEDIA_VAR_TO_ATTR[key]].default
    if isinstance(value, FreeAfterJob):
        return value.value
    if isinstance(value, tuple):
        return " ".join(value)
    return "" if value is None else value


def test_hub_json_has_the_listing_fields():
    assert HUB["type"] == "serverless" and HUB["title"] and HUB["description"] and HUB["category"]
    config = HUB["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1 and config["containerDiskInGb"] >= 30
    assert config["allowedCudaVersions"] == ["13.0"]  # the image's CUDA base (Dockerfile CUDA_IMAGE)


def test_every_hub_env_entry_is_a_worker_setting_with_its_real_default():
    for entry in HUB["config"]["env"]:
        key, field = entry["key"], entry["input"]
        expected = real_default(key)
        assert field["default"] == expected, key
        if field["type"] == "select":
            assert expected in [option["value"] for option in field["options"]], key
        assert field["type"] in ("string", "number", "boolean", "select") and field["name"] and field["description"]
        assert isinstance(field.get("advanced", False), bool), key


def test_hub_env_offers_the_job_settings_and_s3_output():
    keys = {entry["key"] for entry in HUB["config"]["env"]}
    assert {"COMFY_JOB_TIMEOUT_S", "COMFY_FREE_AFTER_JOB", "OUTPUT_MODE", "BUCKET_ENDPOINT_URL",
            "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"} <= keys


def test_an_empty_hub_value_reads_as_unset():
    # The Hub passes every input, filled or not: an empty one must mean the default, not an error.
    empty = {entry["key"]: "" for entry in HUB["config"]["env"] if entry["input"]["default"] == ""}
    assert empty
    media = MediaSettings.from_env(empty)
    assert media.output_mode is None and media.s3_endpoint_url is None
    assert WorkerSettings.from_env({k: v for k, v in empty.items() if k in VAR_TO_ATTR}).comfy_args == ()


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
    assert all(entry["key"] in VAR_TO_ATTR or entry["key"] in MEDIA_VAR_TO_ATTR for entry in config["env"])
