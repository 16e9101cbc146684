"""builder/extra_model_paths.yaml, loaded by the real ComfyUI 0.3.75's own loader."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from builder.fetch_models import MODEL_FOLDERS
from tests.comfy_env import comfy_cache

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "builder" / "extra_model_paths.yaml"
REQUIRED = ["checkpoints", "loras", "vae", "unet", "diffusion_models", "text_encoders", "clip", "clip_vision",
            "controlnet", "upscale_models", "embeddings", "audio_encoders"]
LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}

# Runs inside ComfyUI's venv, from its folder: load a config with utils/extra_config.py and
# report what folder_paths then knows.
PROBE = """
import json, sys
import folder_paths
from utils.extra_config import load_extra_path_config
known = sorted(folder_paths.folder_names_and_paths)  # before loading: the loader adds any name it is given
load_extra_path_config(sys.argv[1])
print(json.dumps({
    "known": known,
    "paths": {name: folder_paths.get_folder_paths(name) for name in sys.argv[2].split(",")},
    "diffusion_models": sorted(folder_paths.get_filename_list("diffusion_models")),
    "text_encoders": sorted(folder_paths.get_filename_list("text_encoders")),
    "loras": sorted(folder_paths.get_filename_list("loras")),
}))
"""


def config_keys() -> list[str]:
    """Top-level keys of the runpod_volume entry (a plain line scan, no YAML library needed)."""
    return re.findall(r"^  ([a-z_]+):", CONFIG.read_text(), flags=re.M)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The config with /runpod-volume swapped for a temporary volume holding a few files."""
    volume = tmp_path_factory.mktemp("runpod-volume")
    for relative in ("models/unet/old.safetensors", "models/diffusion_models/new.safetensors",
                     "models/clip/t5.safetensors", "models/loras/style/a.safetensors"):
        (volume / relative).parent.mkdir(parents=True, exist_ok=True)
        (volume / relative).write_bytes(b"x")
    text = CONFIG.read_text()
    assert "base_path: /runpod-volume/models/" in text
    config = volume / "extra_model_paths.yaml"
    config.write_text(text.replace("/runpod-volume/", f"{volume}/"))
    cache = comfy_cache()
    keys = sorted({LEGACY.get(k, k) for k in config_keys() if k != "base_path"})
    done = subprocess.run([str(cache / "venv" / "bin" / "python"), "-c", PROBE, str(config), ",".join(keys)],
                          cwd=cache / "ComfyUI", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return volume, json.loads(done.stdout.strip().splitlines()[-1])


def test_every_required_folder_is_in_the_config():
    assert [name for name in REQUIRED if name not in config_keys()] == []


def test_every_key_is_a_folder_comfyui_knows(loaded):
    _, report = loaded
    unknown = [k for k in config_keys() if k != "base_path" and LEGACY.get(k, k) not in report["known"]]
    assert unknown == []


def test_each_folder_points_at_the_volume(loaded):
    volume, report = loaded
    for key in config_keys():
        if key == "base_path":
            continue
        assert str(volume / "models" / key) in report["paths"][LEGACY.get(key, key)], key


def test_files_on_the_volume_are_found_under_new_and_legacy_folders(loaded):
    _, report = loaded
    assert {"old.safetensors", "new.safetensors"} <= set(report["diffusion_models"])
    assert "t5.safetensors" in report["text_encoders"]
    assert "style/a.safetensors" in report["loras"]


def test_fetch_models_folders_are_comfyuis(loaded):
    _, report = loaded
    assert sorted(MODEL_FOLDERS - set(LEGACY)) == sorted(set(report["known"]) - {"custom_nodes"})
