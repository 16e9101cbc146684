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
import os
from pathlib import Path
from typing import Any

from comfy.delivery.outputs import history_files, output_location
from comfy.errors import OutputError
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


class FolderSnapshot:
    """What was in ComfyUI's output/ and temp/ folders before a prompt was queued: the
    relative path of every file and folder, so clean-up removes only what the run added.

    ComfyUI's history is what nodes reported, and its cache can list an earlier run's
    files again; neither proves this run wrote a file. A file the snapshot has was there
    before, and is never removed.
    """

    def __init__(self, roots: dict[str, Path], entries: dict[str, set[str]]) -> None:
        self.roots = roots  # folder type -> resolved folder
        self.entries = entries  # folder type -> relative paths (files and folders)

    @classmethod
    def take(cls, settings: WorkerSettings) -> "FolderSnapshot":
        roots: dict[str, Path] = {}
        entries: dict[str, set[str]] = {}
        for folder_type in CLEANED_FOLDERS:
            folder = settings.comfy_folder(folder_type)
            if folder is not None:
                roots[folder_type] = folder.resolve()
                entries[folder_type] = set(_walk(roots[folder_type]))
        return cls(roots, entries)

    def existed(self, folder_type: str, path: Path) -> bool:
        root = self.roots.get(folder_type)
        if root is None:
            return True  # not a folder we looked at: not ours to remove
        return str(path.relative_to(root)) in self.entries[folder_type]

    def new_entries(self) -> list[tuple[str, Path]]:
        """(folder type, path) of everything added since the snapshot, deepest first."""
        added = []
        for folder_type, root in self.roots.items():
            before = self.entries[folder_type]
            added += [(folder_type, root / rel) for rel in _walk(root) if rel not in before]
        return sorted(added, key=lambda entry: len(entry[1].parts), reverse=True)


CLEANED_FOLDERS = ("output", "temp")


def _walk(root: Path) -> list[str]:
    """Every file and folder under root, as paths relative to it (symlinks not followed)."""
    found: list[str] = []
    cut = len(str(root)) + 1
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    found.append(entry.path[cut:])
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return found


def remove_prompt_files(history: dict[str, Any] | None, settings: WorkerSettings, before: FolderSnapshot) -> int:
    """Delete the output and temp files this prompt wrote; return how many.

    A file goes only if the prompt's history lists it, it lies inside ComfyUI's output/ or
    temp/ folder, and it was not there when the prompt was queued (`before`); so input
    files, an operator's files and files an earlier run left are never touched. Folders the
    run created (a `filename_prefix` of `a/b/out`) go too once empty. This also covers what
    delivery does not: PreviewImage files when temp outputs are not asked for, and files of
    a prompt that failed, timed out or was cancelled (ComfyUI clears temp/ only at start-up).
    """
    removed = 0
    for node_id, _key, item in history_files(history):
        try:
            location = output_location(item, node_id, None, settings)
        except OutputError as exc:
            log.warning("not removing %s", exc.message)
            continue
        path = location.path
        if location.folder_type not in CLEANED_FOLDERS or path is None or before.existed(location.folder_type, path):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # gone already (taken out for delivery: comfy/delivery/holding.py); its new folders still go
        except OSError as exc:
            log.warning("could not remove output %s: %s", path, exc)
            continue
        _remove_new_parents(path, location.folder_type, before)
    return removed


def remove_new_entries(before: FolderSnapshot) -> int:
    """After ComfyUI was killed or died mid-job (its history gone with it): remove every file
    and folder added to output/ and temp/ since `before`. Only for a ComfyUI this worker owns,
    where nothing but the job's own prompt writes there."""
    removed = 0
    for _folder_type, path in before.new_entries():
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # deepest first: empty by now, unless something else is in it
            else:
                path.unlink()
            removed += 1
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc)
    return removed


def _remove_new_parents(path: Path, folder_type: str, before: FolderSnapshot) -> None:
    root = before.roots[folder_type]
    folder = path.parent
    while folder != root and root in folder.parents and not before.existed(folder_type, folder):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent
