"""Put a job's input files where ComfyUI's loaders find them, and take them away after.

With ComfyUI's folder on this machine (COMFY_PATH, also in attach mode) files are written
straight into its input/ folder; otherwise they go through POST /upload/image.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from comfy.client import ComfyClient
from comfy.errors import InvalidJobInput
from comfy.job_input import JobInput
from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.inputs")


@dataclass
class StagedInputs:
    """Files written for one job, removed by cleanup()."""

    paths: list[Path] = field(default_factory=list)

    def cleanup(self) -> None:
        for path in self.paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove input file %s: %s", path, exc)
        self.paths.clear()


def resolve_inside(folder: Path, relative_name: str) -> Path:
    """folder/relative_name, refusing anything that would land outside folder."""
    base = folder.resolve()
    target = (base / relative_name).resolve()
    if base != target and base not in target.parents:
        raise InvalidJobInput(f"file name {relative_name!r} points outside ComfyUI's input folder")
    return target


def write_input_file(
    name: str, data: bytes, settings: WorkerSettings, client: ComfyClient, staged: StagedInputs
) -> None:
    """Write one file for the workflow under `name` (relative to ComfyUI's input folder)."""
    input_dir = settings.comfy_folder("input")
    if input_dir is not None:
        target = resolve_inside(input_dir, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: ComfyUI never sees a half-written file.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        staged.paths.append(target)
        return
    subfolder, _, filename = name.rpartition("/")
    with tempfile.NamedTemporaryFile(suffix=f"-{filename}") as tmp:
        tmp.write(data)
        tmp.flush()
        client.upload(Path(tmp.name), filename, subfolder=subfolder)


def stage_inputs(job: JobInput, settings: WorkerSettings, client: ComfyClient) -> StagedInputs:
    """Write the job's images (worker-comfyui `images`) under the names the workflow uses."""
    staged = StagedInputs()
    try:
        for image in job.images:
            write_input_file(image.name, image.data, settings, client, staged)
    except BaseException:
        staged.cleanup()
        raise
    return staged
