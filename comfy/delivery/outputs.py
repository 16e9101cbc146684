"""Every output of a finished prompt: files from every node and key, and text.

Reads /history's `outputs`: {node_id: {key: [items]}}. A file item is any object with
`filename` (+ `subfolder`, `type`), whatever the key (`images`, `gifs`, `video`, `audio`,
`3d`, ...); strings under `text` are text outputs. Order is stable: nodes by id
(numerically), keys by name, items as listed.
"""

from __future__ import annotations

import mimetypes
import posixpath
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from comfy.server.client import ComfyClient
from comfy.errors import OutputError
from comfy.settings import WorkerSettings

for _type, _ext in (
    ("video/mp4", ".mp4"), ("video/webm", ".webm"), ("video/x-matroska", ".mkv"),
    ("image/webp", ".webp"), ("audio/flac", ".flac"), ("audio/ogg", ".ogg"), ("audio/wav", ".wav"),
    ("model/gltf-binary", ".glb"), ("model/obj", ".obj"),
):
    mimetypes.add_type(_type, _ext)


class OutputKind(str, Enum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    TEXT = "text"
    FILE = "file"


class OutputFile(BaseModel):
    """One output of the workflow; `path` is where the worker can read it."""

    node_id: str
    class_type: str | None
    key: str = Field(description="the history key it came under: images, gifs, audio, text, ...")
    kind: OutputKind
    filename: str | None = None
    subfolder: str = ""
    folder_type: str = "output"
    content_type: str | None = None
    size_bytes: int | None = None
    text: str | None = None
    saved_to: str | None = Field(default=None, description="local runs: where the file was written")
    path: Path | None = Field(default=None, exclude=True)


def _node_order(node_id: str) -> tuple[int, int, str]:
    # isdigit() alone takes '²', which int() refuses
    return (0, int(node_id), "") if node_id.isascii() and node_id.isdigit() else (1, 0, node_id)


def kind_of(filename: str, content_type: str | None) -> OutputKind:
    major = (content_type or "").split("/")[0]
    if major in ("image", "video", "audio"):
        return OutputKind(major)
    return OutputKind.FILE


FOLDER_TYPES = ("output", "temp", "input")


class OutputLocation(BaseModel):
    """Where one history entry says a file is: checked to lie inside one of ComfyUI's folders."""

    folder_type: str
    subfolder: str  # normalised: no '.', '..' or empty segments
    filename: str
    path: Path | None  # on this machine, when ComfyUI's folder is here


def output_location(item: dict[str, Any], node_id: str, class_type: str | None,
                    settings: WorkerSettings) -> OutputLocation:
    """Check a file entry of /history; raise OutputError naming the node if it points anywhere
    but inside ComfyUI's output/, temp/ or input/ folder (nothing is read before this says so).

    A history entry is whatever a node returned, so it is not trusted: `type` must be one of
    the three folders and `subfolder/filename` must stay inside it, symlinks resolved.
    """
    folder_type = item.get("type") or "output"
    filename, subfolder = item.get("filename"), item.get("subfolder") or ""

    def refused(why: str) -> OutputError:
        return OutputError(
            f"node {node_id} ({class_type}) reported an output that is {why} "
            f"(type {str(folder_type)[:80]!r}, subfolder {str(subfolder)[:80]!r}, filename {str(filename)[:80]!r}); "
            "refused, nothing was read",
            details={"node_id": node_id, "class_type": class_type, "type": str(folder_type)[:200],
                     "subfolder": str(subfolder)[:200], "filename": str(filename)[:200]},
        )

    if folder_type not in FOLDER_TYPES:
        raise refused(f"not in ComfyUI's {', '.join(FOLDER_TYPES)} folders")
    if not isinstance(filename, str) or not isinstance(subfolder, str) or not filename:
        raise refused("not a file name")
    if "\0" in filename + subfolder or "\\" in filename + subfolder:
        raise refused("not a plain relative path")
    relative = posixpath.normpath(posixpath.join(subfolder, filename))
    if relative.startswith("/") or relative in (".", "..") or relative.startswith("../"):
        raise refused(f"outside ComfyUI's {folder_type} folder")
    normal_subfolder, _, normal_name = relative.rpartition("/")
    folder = settings.comfy_folder(folder_type)
    path = None
    if folder is not None:
        base = folder.resolve()
        path = (base / relative).resolve()
        if base not in path.parents:  # a symlink out of the folder
            raise refused(f"outside ComfyUI's {folder_type} folder")
    return OutputLocation(folder_type=folder_type, subfolder=normal_subfolder, filename=normal_name, path=path)


def history_files(history: dict[str, Any] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(node id, history key, entry) of every file entry of a prompt's history, in a stable order."""
    found = []
    outputs = (history or {}).get("outputs") or {}
    if not isinstance(outputs, dict):
        return found
    for node_id in sorted(outputs, key=_node_order):
        node_outputs = outputs[node_id]
        if not isinstance(node_outputs, dict):
            continue
        for key in sorted(node_outputs):
            items = node_outputs[key]
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and "filename" in item:
                    found.append((node_id, key, item))
    return found


def collect_outputs(
    history: dict[str, Any],
    graph: dict[str, Any],
    settings: WorkerSettings,
    client: ComfyClient,
    scratch_dir: Path,
    include_temp: bool = False,
) -> list[OutputFile]:
    """List the prompt's outputs and make each file readable at a local path.

    Every file entry is checked first (`output_location`): one that points outside ComfyUI's
    folders fails the job before any file is read.
    """
    results: list[OutputFile] = []
    outputs = history.get("outputs") or {}
    if not isinstance(outputs, dict):
        outputs = {}
    locations = {
        id(item): output_location(item, node_id, (graph.get(node_id) or {}).get("class_type"), settings)
        for node_id, _key, item in history_files(history)
    }
    for node_id in sorted(outputs, key=_node_order):
        class_type = (graph.get(node_id) or {}).get("class_type")
        node_outputs = outputs[node_id] if isinstance(outputs[node_id], dict) else {}
        for key in sorted(node_outputs):
            items = node_outputs[key]
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, str) and key == "text":
                    results.append(OutputFile(
                        node_id=node_id, class_type=class_type, key=key, kind=OutputKind.TEXT,
                        content_type="text/plain", size_bytes=len(item.encode()), text=item,
                    ))
                elif isinstance(item, dict) and id(item) in locations:
                    location = locations[id(item)]
                    if location.folder_type == "temp" and not include_temp:
                        continue
                    results.append(_fetch_file(location, node_id, class_type, key, client, scratch_dir, len(results)))
    return results


def _fetch_file(
    location: OutputLocation, node_id: str, class_type: str | None, key: str,
    client: ComfyClient, scratch_dir: Path, index: int,
) -> OutputFile:
    path = location.path
    if path is not None and not path.is_file():
        raise OutputError(
            f"node {node_id} ({class_type}) reported output {location.filename!r} in ComfyUI's "
            f"{location.folder_type} folder, but there is no such file",
            details={"node_id": node_id, "class_type": class_type, "filename": location.filename,
                     "subfolder": location.subfolder, "type": location.folder_type},
        )
    if path is None:  # ComfyUI's folder is not on this machine
        path = scratch_dir / f"{index:04d}-{location.filename}"
        client.download(location.filename, location.subfolder, location.folder_type, path)
    content_type = mimetypes.guess_type(location.filename)[0] or "application/octet-stream"
    return OutputFile(
        node_id=node_id, class_type=class_type, key=key, kind=kind_of(location.filename, content_type),
        filename=location.filename, subfolder=location.subfolder, folder_type=location.folder_type,
        content_type=content_type, size_bytes=path.stat().st_size, path=path,
    )
