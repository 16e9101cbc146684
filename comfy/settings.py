"""Worker settings, read once from the environment.

Standard library only: handler.py reads these and starts ComfyUI before it imports
anything heavy (runpod alone takes about 2 s to import). docs/deploy.md lists every
variable with its default.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Mapping


class FreeAfterJob(str, Enum):
    """What to ask ComfyUI to free after each job (POST /free)."""

    NONE = "none"
    MEMORY = "memory"
    MODELS = "models"


RUNPOD_VOLUME = Path("/runpod-volume")  # where RunPod mounts a network volume
LOCAL_STATE = Path("/tmp/comfy-worker")  # the container's own disk, when no volume is mounted
RUNPOD_HF_CACHE = RUNPOD_VOLUME / "huggingface-cache" / "hub"  # RunPod's cached models
# One job prepares, one executes, one delivers: a fourth would only wait, holding its inputs on disk.
MAX_JOB_CONCURRENCY = 3


def on_volume(folder: str, volume: Path = RUNPOD_VOLUME) -> Path:
    """`<volume>/comfy-worker/<folder>` when a network volume is mounted there, else the container's disk.

    RunPod mounts its cached models under /runpod-volume too, without a network volume; so
    the test is whether /runpod-volume itself is a mount point.
    """
    return (volume / "comfy-worker" if os.path.ismount(volume) else LOCAL_STATE) / folder


class SettingsError(ValueError):
    """An environment variable has a value the worker cannot use."""


def _number(kind: Callable[[str], float], low: float | None = None, high: float | None = None):
    def parse(raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected a {kind.__name__}, got {raw!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{value} is out of range [{low}, {high}]")
        return value
    return parse


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _free_after_job(raw: str) -> FreeAfterJob:
    try:
        return FreeAfterJob(raw.lower())
    except ValueError:
        raise ValueError(f"expected none, memory or models, got {raw!r}") from None


@dataclass(frozen=True)
class WorkerSettings:
    """How the worker finds, starts and talks to ComfyUI, and what it does around jobs."""

    comfy_path: Path | None = Path("/workspace/ComfyUI")  # COMFY_PATH; empty: unknown
    comfy_host: str = "127.0.0.1"  # COMFY_HOST
    comfy_port: int = 8188  # COMFY_PORT
    comfy_url: str | None = None  # COMFY_URL: attach to this ComfyUI and start none
    comfy_args: tuple[str, ...] = ()  # COMFY_ARGS: extra flags for main.py
    comfy_python: str = sys.executable  # COMFY_PYTHON: interpreter for ComfyUI's main.py
    start_timeout_s: float = 600.0  # COMFY_START_TIMEOUT_S
    job_timeout_s: float = 1800.0  # COMFY_JOB_TIMEOUT_S: deadline when the job sets none
    job_concurrency: int = 1  # JOB_CONCURRENCY: jobs held at once; 2-3 pipeline them around ComfyUI's one slot
    free_after_job: FreeAfterJob = FreeAfterJob.NONE  # COMFY_FREE_AFTER_JOB
    refresh_worker: bool = False  # REFRESH_WORKER: replace the worker after every job
    refresh_after_crash: bool = True  # REFRESH_WORKER_AFTER_CRASH: ...after ComfyUI crashed
    max_images: int = 100  # MAX_INPUT_IMAGES: images per job
    progress_interval_s: float = 0.5  # PROGRESS_INTERVAL_S: least time between progress updates
    warmup_workflow: str | None = None  # WARMUP_WORKFLOW: a file, or inline JSON, run before the first job
    warmup_required: bool = False  # WARMUP_REQUIRED: a failed warm-up stops the worker
    model_cache_dir: Path | None = None  # MODEL_CACHE_DIR; unset: on_volume("models")
    hf_hub_cache: Path = RUNPOD_HF_CACHE  # HF_HUB_CACHE: a Hugging Face hub cache shown to ComfyUI
    custom_nodes: str | None = None  # CUSTOM_NODES: a manifest file, or its lines, installed at boot
    custom_nodes_dir: Path | None = None  # CUSTOM_NODES_DIR; unset: on_volume("custom-nodes")
    local_output_dir: Path = Path("outputs")  # LOCAL_OUTPUT_DIR: local runs write outputs to <this>/<job id>/

    @property
    def attach_mode(self) -> bool:
        """True when an external ComfyUI is used and no process is started."""
        return bool(self.comfy_url)

    @property
    def base_url(self) -> str:
        return self.comfy_url or f"http://{self.comfy_host}:{self.comfy_port}"

    @property
    def model_cache_root(self) -> Path:
        """Where models fetched for jobs live (shared by every worker on the network volume)."""
        return self.model_cache_dir or on_volume("models")

    @property
    def custom_nodes_root(self) -> Path:
        """Where CUSTOM_NODES installs go, one folder per manifest."""
        return self.custom_nodes_dir or on_volume("custom-nodes")

    def comfy_folder(self, folder_type: str) -> Path | None:
        """ComfyUI's input/, output/ or temp/ folder when it exists on this machine."""
        if self.comfy_path is None:
            return None
        folder = self.comfy_path / folder_type
        return folder if folder.is_dir() else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Read the settings; bad values raise SettingsError naming every bad variable."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        problems: list[str] = []
        for attr, (var, parse) in _ENV_VARS.items():
            raw = env.get(var)
            if raw is None:
                continue
            try:
                values[attr] = parse(raw.strip())
            except ValueError as exc:
                problems.append(f"{var}: {exc}")
        if problems:
            raise SettingsError("invalid worker settings: " + "; ".join(problems))
        return cls(**values)


_ENV_VARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "comfy_path": ("COMFY_PATH", lambda raw: Path(raw) if raw else None),
    "comfy_host": ("COMFY_HOST", str),
    "comfy_port": ("COMFY_PORT", _number(int, 1, 65535)),
    "comfy_url": ("COMFY_URL", lambda raw: raw.rstrip("/") or None),
    "comfy_args": ("COMFY_ARGS", lambda raw: tuple(shlex.split(raw))),
    "comfy_python": ("COMFY_PYTHON", lambda raw: raw or sys.executable),
    "start_timeout_s": ("COMFY_START_TIMEOUT_S", _number(float, 1)),
    "job_timeout_s": ("COMFY_JOB_TIMEOUT_S", _number(float, 1)),
    "job_concurrency": ("JOB_CONCURRENCY", _number(int, 1, MAX_JOB_CONCURRENCY)),
    "free_after_job": ("COMFY_FREE_AFTER_JOB", _free_after_job),
    "refresh_worker": ("REFRESH_WORKER", _boolean),
    "refresh_after_crash": ("REFRESH_WORKER_AFTER_CRASH", _boolean),
    "max_images": ("MAX_INPUT_IMAGES", _number(int, 0)),
    "progress_interval_s": ("PROGRESS_INTERVAL_S", _number(float, 0)),
    "warmup_workflow": ("WARMUP_WORKFLOW", lambda raw: raw or None),
    "warmup_required": ("WARMUP_REQUIRED", _boolean),
    "model_cache_dir": ("MODEL_CACHE_DIR", lambda raw: Path(raw) if raw else None),
    "hf_hub_cache": ("HF_HUB_CACHE", lambda raw: Path(raw) if raw else RUNPOD_HF_CACHE),
    "custom_nodes": ("CUSTOM_NODES", lambda raw: raw or None),
    "custom_nodes_dir": ("CUSTOM_NODES_DIR", lambda raw: Path(raw) if raw else None),
    "local_output_dir": ("LOCAL_OUTPUT_DIR", lambda raw: Path(raw or "outputs")),
}
