"""The real CPU ComfyUI for tests: where it is cached and how to get a private copy.

Every test session works on its own copy of the cached ComfyUI tree (25 MB, copied in
well under a second) with tests/comfy_nodes/ added to custom_nodes/, so input/ and
output/ are its own and parallel runs never share folders.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_NODES = Path(__file__).resolve().parent / "comfy_nodes"


def comfy_cache() -> Path:
    """The cached CPU ComfyUI (ComfyUI/ and venv/), built when missing."""
    cached = os.environ.get("COMFY_TEST_CACHE")
    if cached and (Path(cached) / ".complete").exists():
        return Path(cached)
    out = subprocess.run(
        [str(ROOT / "scripts" / "ensure_test_comfyui.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def make_comfy_copy(dest: Path) -> Path:
    """A private ComfyUI tree at dest with the test-only custom nodes installed."""
    shutil.copytree(comfy_cache() / "ComfyUI", dest, symlinks=True)
    for node_file in TEST_NODES.glob("*.py"):
        shutil.copy(node_file, dest / "custom_nodes" / node_file.name)
    for folder in ("input", "output", "temp"):
        (dest / folder).mkdir(exist_ok=True)
    return dest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(comfy_path: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment for a worker that starts its own ComfyUI from comfy_path on port."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("RUNPOD_", "COMFY_", "MODEL_CACHE_", "WARMUP_", "CUSTOM_NODES", "HF_"))
        or k == "COMFY_TEST_CACHE"
    }
    env.update(
        COMFY_PATH=str(comfy_path),
        COMFY_PORT=str(port),
        COMFY_PYTHON=str(comfy_cache() / "venv" / "bin" / "python"),
        COMFY_ARGS="--cpu",
        # beside the ComfyUI copy, never the machine's /runpod-volume or /tmp defaults
        MODEL_CACHE_DIR=str(comfy_path.parent / "model-cache"),
        CUSTOM_NODES_DIR=str(comfy_path.parent / "custom-nodes"),
        HF_HUB_CACHE=str(comfy_path.parent / "huggingface-hub"),
    )
    env.update(extra)
    return env
