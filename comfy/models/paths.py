"""The folders ComfyUI is told about at start-up: the model cache, RunPod's Hugging Face cache.

Written as an extra_model_paths file that ComfyUI loads (`--extra-model-paths-config`):

* the model cache (MODEL_CACHE_DIR): `<cache>/<folder>/` for every ComfyUI model folder;
* RunPod's cached models (the Hugging Face cache, `/runpod-volume/huggingface-cache/hub`,
  or HF_HUB_CACHE): each repository's current snapshot is linked as `<org>/<repo>/<file>`
  into a folder of this worker's, added to every model folder, so a workflow names
  `black-forest-labs/FLUX.1-dev/ae.safetensors` rather than a path with a commit in it;
* the custom nodes installed from CUSTOM_NODES (comfy/nodes/provision.py).

Standard library only: handler.py writes it before ComfyUI starts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from comfy.models.files import MODEL_FOLDERS

log = logging.getLogger("comfy.models.paths")


def link_hf_snapshots(hub: Path, dest: Path) -> int:
    """Link the current snapshot of every model repository in a Hugging Face hub cache into dest.

    `models--org--name/snapshots/<rev>/path/file` becomes `dest/org/name/path/file`. The
    revision is the one `refs/main` names, else the newest snapshot. Returns the number of files.
    """
    if not hub.is_dir():
        return 0
    linked = 0
    for repo in sorted(hub.glob("models--*")):
        snapshot = _current_snapshot(repo)
        if snapshot is None:
            continue
        name = repo.name[len("models--"):].split("--")
        for path in snapshot.rglob("*"):
            if path.is_dir():
                continue
            link = dest.joinpath(*name, path.relative_to(snapshot))
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(path, link)
                linked += 1
    return linked


def _current_snapshot(repo: Path) -> Path | None:
    snapshots = repo / "snapshots"
    try:
        main = (repo / "refs" / "main").read_text().strip()
        if main and (snapshots / main).is_dir():
            return snapshots / main
    except OSError:
        pass
    found = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def extra_model_paths_yaml(model_cache: Path | None, hf_links: Path | None, custom_nodes: Path | None) -> str:
    """ComfyUI's extra_model_paths format; values are JSON strings, which YAML reads as they are."""
    sections = []
    folders = sorted(MODEL_FOLDERS)
    if model_cache is not None:
        lines = [f"  base_path: {json.dumps(str(model_cache))}"] + [f"  {f}: {json.dumps(f + '/')}" for f in folders]
        sections.append("comfy_worker_model_cache:\n" + "\n".join(lines))
    if hf_links is not None:
        lines = [f"  {f}: {json.dumps(str(hf_links))}" for f in folders if f not in ("unet", "clip")]
        sections.append("comfy_worker_hf_cache:\n" + "\n".join(lines))
    if custom_nodes is not None:
        sections.append(f"comfy_worker_custom_nodes:\n  custom_nodes: {json.dumps(str(custom_nodes))}")
    return "# Written by the worker at start-up (comfy/models/paths.py); ComfyUI loads it.\n" + "\n".join(sections) + "\n"
