"""Every output of a finished prompt: files from every node and key, and text.

Reads /history's `outputs`: {node_id: {key: [items]}}. A file item is any object with
`filename` (+ `subfolder`, `type`), whatever the key (`images`, `gifs`, `video`, `audio`,
`3d`, ...); strings under `text` are text outputs. Order is stable: nodes by id
(numerically), keys by name, items as listed.
"""

from __future__ import annotations

import mimetypes
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
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def kind_of(filename: str, content_type: str | None) -> OutputKind:
    major = (content_type or "").split("/")[0]
    if major in ("image", "video", "audio"):
        return OutputKind(major)
    return OutputKind.FILE


def _local_path(settings: WorkerSettings, item: dict[str, Any]) -> Path | None:
    folder = settings.comfy_folder(item.get("type") or "output")
    if folder is None:
        return None
    base = folder.resolve()
    path = (base / (item.get("subfolder") or "") / item["filename"]).resolve()
    if base not in path.parents:
        raise OutputError(f"output {item['filename']!r} points outside ComfyUI's {item.get('type')} folder")
    return path if path.is_file() else None


def collect_outputs(
    history: dict[str, Any],
    graph: dict[str, Any],
    settings: WorkerSettings,
    client: ComfyClient,
    scratch_dir: Path,
    include_temp: bool = False,
) -> list[OutputFile]:
    """List the prompt's outputs and make each file readable at a local path."""
    results: list[OutputFile] = []
    outputs = history.get("outputs") or {}
    for node_id in sorted(outputs, key=_node_order):
        class_type = (graph.get(node_id) or {}).get("class_type")
        node_outputs = outputs[node_id] or {}
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
                elif isinstance(item, dict) and isinstance(item.get("filename"), str):
                    folder_type = item.get("type") or "output"
                    if folder_type == "temp" and not include_temp:
                        continue
                    results.append(_fetch_file(item, node_id, class_type, key, settings, client, scratch_dir, len(results)))
    return results


def _fetch_file(
    item: dict[str, Any], node_id: str, class_type: str | None, key: str,
    settings: WorkerSettings, client: ComfyClient, scratch_dir: Path, index: int,
) -> OutputFile:
    filename = item["filename"]
    subfolder = item.get("subfolder") or ""
    folder_type = item.get("type") or "output"
    path = _local_path(settings, item)
    if path is None:
        path = scratch_dir / f"{index:04d}-{Path(filename).name}"
        client.download(filename, subfolder, folder_type, path)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return OutputFile(
        node_id=node_id, class_type=class_type, key=key, kind=kind_of(filename, content_type),
        filename=filename, subfolder=subfolder, folder_type=folder_type,
        content_type=content_type, size_bytes=path.stat().st_size, path=path,
    )
