"""Local runs keep every output: files and texts written to a folder (default ./outputs/<job id>/).

The worker removes outputs from ComfyUI's folders after delivery, and the SDK's log cuts the
result's base64 short, so without this a local run would show its files nowhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from comfy.delivery.outputs import OutputFile, OutputKind


def save_outputs(files: list[OutputFile], folder: Path) -> list[OutputFile]:
    """Copy each file (texts as `<node>-<key>-<n>.txt`) under `folder`; the outputs with `saved_to` set."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder.resolve()
    saved: list[OutputFile] = []
    for index, item in enumerate(files):
        if item.kind is OutputKind.TEXT:
            dest = base / f"{item.node_id}-{item.key}-{index}.txt"
            dest.write_text(item.text or "", encoding="utf-8")
        elif item.path is not None:
            dest = (base / item.subfolder / (item.filename or item.path.name)).resolve()
            if base not in dest.parents:  # ComfyUI named it; still never write outside the folder
                dest = base / Path(item.filename or item.path.name).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(item.path, dest)
        else:
            saved.append(item)
            continue
        saved.append(item.model_copy(update={"saved_to": _display(dest)}))
    return saved


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)  # same disk: instant, and the worker's removal of the source keeps it
    except OSError:
        shutil.copyfile(source, dest)


def _display(path: Path) -> str:
    """Relative to the working directory when inside it (shorter in a terminal), else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
