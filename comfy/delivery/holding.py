"""A job's output files, taken out of ComfyUI's folders before ComfyUI runs the next prompt.

With pipelined jobs (JOB_CONCURRENCY above 1) the next job's prompt runs while this job still
delivers. Left in output/ or temp/, this job's files could be overwritten by a node of the next
prompt that writes a fixed name, be wiped by a restart of ComfyUI (it empties temp/ when it
starts), or, cleaned up by name after delivery, take with them a file the next prompt had just
written under the same name. So before the slot is handed on, every file this run created (the
prompt's history lists it, it lies inside output/ or temp/, and the listing taken before the
prompt does not have it) is moved into a folder of the job's own, `output/.worker-held-<hex>/<n>/`:
a rename, or a copy and removal where temp/ is on another file system. Delivery reads the files
there and the folder goes when the job ends. A file the run did not create (an input a node
reported, a file that was there before) is read where it is and never moved.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from comfy.delivery.cleanup import FolderSnapshot
from comfy.delivery.outputs import OutputFile
from comfy.errors import OutputError
from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.delivery.holding")

HELD_PREFIX = ".worker-held-"


class HeldOutputs:
    """The folder one job's outputs were moved into; `release()` removes it."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder

    @classmethod
    def take(cls, files: list[OutputFile], before: FolderSnapshot,
             settings: WorkerSettings) -> tuple["HeldOutputs", list[OutputFile]]:
        """Move every file of `files` this run created into the job's own folder; return the
        folder and the files with their new paths (in the same order)."""
        output_root = settings.comfy_folder("output")
        held = cls()
        moved: dict[Path, Path] = {}  # a file two entries name moves once
        result: list[OutputFile] = []
        for index, item in enumerate(files):
            path = item.path
            if path is None or not _created_by_run(item.folder_type, path, before):
                result.append(item)
                continue
            if path not in moved:
                if held.folder is None:
                    assert output_root is not None  # the run wrote into it, so it is on this machine
                    held.folder = output_root.resolve() / f"{HELD_PREFIX}{uuid.uuid4().hex[:12]}"
                    held.folder.mkdir()
                # One folder per file: its name stays what ComfyUI called it (uploads and errors show it).
                slot = held.folder / f"{index:04d}"
                slot.mkdir()
                moved[path] = _move(path, slot / path.name, item)
            result.append(item.model_copy(update={"path": moved[path]}))
        return held, result

    def release(self) -> None:
        """Remove the folder and everything in it (best effort: a job's result never depends on it)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.folder.exists():
                log.warning("could not remove the held outputs in %s", self.folder)
            self.folder = None


def _created_by_run(folder_type: str, path: Path, before: FolderSnapshot) -> bool:
    root = before.roots.get(folder_type)
    return root is not None and root in path.parents and not before.existed(folder_type, path)


def _move(source: Path, target: Path, item: OutputFile) -> Path:
    try:
        source.rename(target)
        return target
    except OSError:
        pass  # another file system (temp/ elsewhere), or a rename the folder refuses: copy instead
    try:
        shutil.copyfile(source, target)
        source.unlink()
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise OutputError(
            f"could not take output {item.filename!r} of node {item.node_id} out of ComfyUI's {item.folder_type} "
            f"folder for delivery: {exc.strerror or exc}",
            details={"node_id": item.node_id, "filename": item.filename, "errno": exc.errno},
        ) from None
    return target
