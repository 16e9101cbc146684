"""Output files leave the worker's disk once delivered, without breaking ComfyUI's cache.

ComfyUI answers an identical prompt from its cache: nothing runs, and /history lists the
files of the earlier run again. If those files were deleted after the earlier delivery,
the repeated job would have nothing to return. So every output node (`output_node` in
/object_info: SaveImage, SaveVideo, PreviewImage, ...) gets one extra input holding a
per-run id. ComfyUI's cache key includes every input of a node, so output nodes always
run again (and write fresh files), while everything upstream of them (model loads,
sampling) is still served from the cache. ComfyUI passes a node only the inputs its class
declares, so the extra input never reaches the node's code.
"""

from __future__ import annotations

import logging
from typing import Any

from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.delivery.cleanup")

RUN_MARK_INPUT = "_worker_run"


def mark_output_nodes(graph: dict[str, Any], object_info: dict[str, Any], run_id: str) -> None:
    """Give every output node of `graph` the input `_worker_run: run_id` (in place)."""
    for node_id, node in list(graph.items()):
        info = object_info.get(node.get("class_type")) or {}
        if info.get("output_node"):
            # A new node dict: the job input's own dicts are left as the caller sent them.
            graph[node_id] = {**node, "inputs": {**(node.get("inputs") or {}), RUN_MARK_INPUT: run_id}}


def remove_prompt_files(history: dict[str, Any] | None, settings: WorkerSettings) -> int:
    """Delete every output and temp file a prompt's history lists; return how many.

    Covers what delivery does not: PreviewImage files when temp outputs are not asked for,
    and files written by a prompt that then failed, timed out or was cancelled. Without
    this a long-lived worker's disk fills with them (ComfyUI clears temp/ only at start-up).
    """
    removed = 0
    for node_outputs in ((history or {}).get("outputs") or {}).values():
        for items in (node_outputs or {}).values():
            for item in items if isinstance(items, list) else ():
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                folder_type = item.get("type") or "output"
                folder = settings.comfy_folder(folder_type) if folder_type in ("output", "temp") else None
                if folder is None:
                    continue  # input files are not the prompt's to remove; a remote ComfyUI's are out of reach
                base = folder.resolve()
                path = (base / (item.get("subfolder") or "") / item["filename"]).resolve()
                if base not in path.parents:
                    continue
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("could not remove output %s: %s", path, exc)
    return removed
