"""What happens before ComfyUI starts: CUSTOM_NODES installed, and the folders ComfyUI is told about.

handler.py calls prepare_boot() first thing, then starts ComfyUI with what it returns:
the Python to run (the custom nodes' layered virtualenv, when they have requirements) and
one extra_model_paths file naming the model cache, RunPod's Hugging Face cache and the
custom nodes (comfy/models/paths.py). Without CUSTOM_NODES this takes a few milliseconds;
with a manifest already installed on the volume, one run of ComfyUI's Python more, to ask
its versions (0.26 s measured: docs/benchmarks.md).

Standard library only: it runs before the worker's heavy imports.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from comfy.models.paths import extra_model_paths_yaml, link_hf_snapshots
from comfy.nodes.manifest import ListError
from comfy.nodes.provision import CustomNodeSet, ProvisionError, provision_custom_nodes
from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.worker.boot")


class BootError(RuntimeError):
    """The worker cannot prepare ComfyUI's start (a bad CUSTOM_NODES manifest, an unusable volume)."""


@dataclass(frozen=True)
class Boot:
    """What ComfyUI is started with."""

    settings: WorkerSettings  # COMFY_PYTHON and COMFY_ARGS as ComfyUI gets them
    custom_nodes: CustomNodeSet | None
    config: Path | None  # the extra_model_paths file written for ComfyUI
    seconds: float


def read_manifest(value: str) -> tuple[str, str]:
    """CUSTOM_NODES as (text, where it came from): a file's path, or the lines themselves (`;` separates lines too)."""
    candidate = Path(value.strip())
    if "\n" not in value and ";" not in value and " " not in value.strip():
        if not candidate.is_file():
            raise BootError(f"CUSTOM_NODES: the manifest file {candidate} does not exist")
        try:
            return candidate.read_text(encoding="utf-8"), f"CUSTOM_NODES file {candidate}"
        except OSError as exc:
            raise BootError(f"CUSTOM_NODES: cannot read {candidate}: {exc.strerror or exc}") from None
    return value.replace(";", "\n"), "CUSTOM_NODES"


def prepare_boot(settings: WorkerSettings) -> Boot:
    """Install CUSTOM_NODES (or find it installed) and write ComfyUI's extra model paths."""
    started = time.monotonic()
    if settings.attach_mode:
        if settings.custom_nodes:
            log.warning("CUSTOM_NODES is not installed in attach mode (COMFY_URL): the worker does not start ComfyUI")
        return Boot(settings, None, None, 0.0)
    custom_nodes = None
    if settings.custom_nodes:
        text, source = read_manifest(settings.custom_nodes)
        try:
            custom_nodes = provision_custom_nodes(text, settings.custom_nodes_root, settings.comfy_python, source)
        except (ListError, ProvisionError) as exc:
            raise BootError(str(exc)) from None
        except OSError as exc:
            raise BootError(f"CUSTOM_NODES: cannot install into {settings.custom_nodes_root}: {exc}") from None
        log.info("custom nodes: %d of %d ready in %s (%d reused, %d installed now) in %.2f s",
                 len(custom_nodes.nodes) - len(custom_nodes.failures), len(custom_nodes.nodes), custom_nodes.root,
                 len(custom_nodes.nodes) - len(custom_nodes.installed_now), len(custom_nodes.installed_now),
                 custom_nodes.seconds)
        custom_nodes.nodes_dir.mkdir(parents=True, exist_ok=True)  # ComfyUI lists every custom_nodes folder it is given
        baked = settings.comfy_path / "custom_nodes" if settings.comfy_path else None
        for node in custom_nodes.nodes:
            if baked is not None and (baked / node.name).exists():
                log.warning("custom nodes: %s is in the image too (%s); ComfyUI loads both, and whichever it loads "
                            "last defines their shared classes", node.name, baked / node.name)
    scratch = Path(tempfile.mkdtemp(prefix="comfy-worker-boot-"))
    atexit.register(shutil.rmtree, scratch, True)
    hf_links = scratch / "huggingface"
    if link_hf_snapshots(settings.hf_hub_cache, hf_links):
        log.info("RunPod's cached models in %s are visible to ComfyUI as <org>/<repo>/<file>", settings.hf_hub_cache)
    config = scratch / "extra_model_paths.yaml"
    config.write_text(extra_model_paths_yaml(
        settings.model_cache_root, hf_links if hf_links.is_dir() else None,
        custom_nodes.nodes_dir if custom_nodes is not None else None,
    ))
    comfy_settings = dataclasses.replace(
        settings,
        comfy_python=(custom_nodes.python if custom_nodes is not None and custom_nodes.python else settings.comfy_python),
        comfy_args=(*settings.comfy_args, "--extra-model-paths-config", str(config)),
    )
    return Boot(comfy_settings, custom_nodes, config, time.monotonic() - started)
