"""comfy/settings.py: where the volume-backed folders default to, and the new variables' parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy.settings import LOCAL_STATE, RUNPOD_HF_CACHE, SettingsError, WorkerSettings, on_volume


def test_folders_go_on_the_network_volume_only_when_one_is_mounted(tmp_path):
    assert on_volume("models", volume=Path("/proc")) == Path("/proc/comfy-worker/models")  # a mount point
    # a plain folder (RunPod makes /runpod-volume/huggingface-cache without a network volume): the container's disk
    assert on_volume("models", volume=tmp_path) == LOCAL_STATE / "models"


def test_explicit_folders_win_and_defaults_follow_the_volume(tmp_path):
    settings = WorkerSettings.from_env({"MODEL_CACHE_DIR": str(tmp_path / "m"), "CUSTOM_NODES_DIR": str(tmp_path / "n")})
    assert settings.model_cache_root == tmp_path / "m" and settings.custom_nodes_root == tmp_path / "n"
    defaults = WorkerSettings.from_env({})
    assert defaults.model_cache_root == on_volume("models") and defaults.hf_hub_cache == RUNPOD_HF_CACHE


def test_empty_values_mean_unset():
    settings = WorkerSettings.from_env({"WARMUP_WORKFLOW": "", "CUSTOM_NODES": " ", "MODEL_CACHE_DIR": ""})
    assert settings.warmup_workflow is None and settings.custom_nodes is None and settings.model_cache_dir is None


def test_a_bad_warmup_required_is_named():
    with pytest.raises(SettingsError, match="WARMUP_REQUIRED: expected true or false"):
        WorkerSettings.from_env({"WARMUP_REQUIRED": "sometimes"})


def test_job_concurrency_is_one_by_default_and_at_most_three():
    assert WorkerSettings.from_env({}).job_concurrency == 1
    assert WorkerSettings.from_env({"JOB_CONCURRENCY": "3"}).job_concurrency == 3
    for bad, message in (("4", "out of range"), ("0", "out of range"), ("two", "expected a int")):
        with pytest.raises(SettingsError, match=f"JOB_CONCURRENCY: .*{message}"):
            WorkerSettings.from_env({"JOB_CONCURRENCY": bad})
