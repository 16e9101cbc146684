"""Put a job's input files where ComfyUI's loaders find them, and take them away after.

With ComfyUI's folder on this machine (COMFY_PATH, also in attach mode) files are written
straight into its input/ folder; otherwise they go through POST /upload/image.

`inputs` entries (URL, base64, data URI) get a name unique to the job
(`in-<12 hex>-<index>-<name>`), so consecutive and concurrent jobs never overwrite each
other's files, and that name is written into `workflow[node].inputs[field]`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from comfy.server.client import ComfyClient
from comfy.media.downloads import DownloadCancelled, InputTooLarge, download_to_file
from comfy.errors import InvalidJobInput
from comfy.media.request import ImageInput, MediaInput, decode_base64_payload
from comfy.media.settings import MediaSettings
from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.media.staging")

# Inputs fetched at once: a job with a video, an image and an audio file waits for the
# slowest, not for all three in turn; a handful keeps the pressure on one origin polite.
PARALLEL_INPUTS = 4


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


def stage_inputs(
    images: list[ImageInput], inputs: list[MediaInput], workflow: dict[str, Any], settings: WorkerSettings,
    client: ComfyClient, media: MediaSettings | None = None, cancel: threading.Event | None = None,
) -> StagedInputs:
    """Write the job's images (worker-comfyui `images`) under the names the workflow uses,
    then fetch its `inputs` and point their nodes' fields at them (in `workflow`, whose
    changed nodes are replaced, not edited); `cancel` stops downloads."""
    staged = StagedInputs()
    try:
        for image in images:
            write_input_file(image.name, image.data, settings, client, staged)
        if inputs:
            media = media or MediaSettings.from_env()
            check_input_targets(inputs, workflow, client.object_info())
            names = _stage_all(inputs, uuid.uuid4().hex[:12], settings, client, media, staged, cancel)
            for item, name in zip(inputs, names):
                node = workflow[item.node]  # replaced, not edited: the caller's dicts stay as given
                workflow[item.node] = {**node, "inputs": {**(node.get("inputs") or {}), item.field: name}}
    except BaseException:
        staged.cleanup()
        raise
    return staged


def _stage_all(
    items: list[MediaInput], job_tag: str, settings: WorkerSettings, client: ComfyClient,
    media: MediaSettings, staged: StagedInputs, cancel: threading.Event | None,
) -> list[str]:
    """Stage every input, PARALLEL_INPUTS at a time; return their names in input order.

    The first failure stops the others (and so does the job's cancellation), and is the
    error raised: not the "cancelled" of the downloads it stopped.
    """
    stop = threading.Event()

    def stage_one(index: int, item: MediaInput) -> str:
        if stop.is_set():  # another input failed, or the job was cancelled: do not start
            raise DownloadCancelled("not fetched: the job's inputs were stopped")
        try:
            return stage_media_input(item, f"in-{job_tag}-{index}-", settings, client, media, staged, stop)
        except BaseException:
            stop.set()  # before this thread can pick up the next input
            raise

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(PARALLEL_INPUTS, len(items)),
                                               thread_name_prefix="input") as pool:
        futures = [pool.submit(stage_one, index, item) for index, item in enumerate(items)]
        pending = set(futures)
        while pending:
            _, pending = concurrent.futures.wait(pending, timeout=0.1, return_when=concurrent.futures.FIRST_EXCEPTION)
            if cancel is not None and cancel.is_set():
                stop.set()
            if stop.is_set():
                for future in pending:
                    future.cancel()  # not started yet: never starts
    failures = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    if failures:
        real = [exc for exc in failures if not isinstance(exc, DownloadCancelled)]
        raise (real or failures)[0]
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("the job was cancelled while its inputs were being fetched")
    return [f.result() for f in futures]


def check_input_targets(items: list[MediaInput], workflow: dict[str, Any], object_info: dict[str, Any]) -> None:
    """Every input must name a field its node really has, and one that is not a link."""
    problems = []
    for item in items:
        node = workflow[item.node]
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        current = (node.get("inputs") or {}).get(item.field)
        if info is None:
            problems.append(f"node {item.node}: class {class_type!r} is not installed in this ComfyUI")
            continue
        declared = {**(info.get("input", {}).get("required") or {}), **(info.get("input", {}).get("optional") or {})}
        if item.field not in declared and item.field not in (node.get("inputs") or {}):
            fields = ", ".join(sorted(declared)) or "none"
            problems.append(f"node {item.node} ({class_type}) has no input {item.field!r} (its inputs: {fields})")
        elif isinstance(current, list):
            problems.append(f"node {item.node} ({class_type}) input {item.field!r} is linked to node {current[0]}; "
                            "a file cannot replace a link")
    if problems:
        raise InvalidJobInput("inputs: " + "; ".join(problems), details=[{"field": "inputs", "message": p} for p in problems])


_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_KIND_EXTENSIONS = {"image": ".png", "video": ".mp4", "audio": ".wav", "file": ".bin"}


def _base_name(item: MediaInput, content_type: str | None = None) -> str:
    """A short, safe file name: the given name, else the URL's last path segment, else by kind."""
    if item.name:
        raw = item.name.rsplit("/", 1)[-1]
    elif item.url:
        raw = unquote(urlsplit(item.url).path.rsplit("/", 1)[-1])
    else:
        raw = ""
    stem, dot, ext = _UNSAFE_CHARS.sub("_", raw).strip("._-").rpartition(".")
    if not dot:
        stem, ext = ext, ""
    if not ext:
        guessed = mimetypes.guess_extension((content_type or "").split(";")[0].strip()) if content_type else None
        ext = (guessed or _KIND_EXTENSIONS.get(item.kind or "file", ".bin")).lstrip(".")
    return f"{(stem or 'input')[:80]}.{ext[:10]}"


def _data_uri_type(value: str) -> str | None:
    head = value[5:value.find(",")] if "," in value else ""
    return head.split(";")[0] or None


def stage_media_input(
    item: MediaInput, unique_prefix: str, settings: WorkerSettings, client: ComfyClient,
    media: MediaSettings, staged: StagedInputs, cancel: threading.Event | None = None,
) -> str:
    """Fetch or decode one input into ComfyUI's input folder; return the name it got."""
    input_dir = settings.comfy_folder("input")
    work_dir = Path(tempfile.mkdtemp(prefix="comfy-input-")) if input_dir is None else None
    try:
        landing = input_dir if input_dir is not None else work_dir
        if item.url:
            temp_target = landing / f"{unique_prefix}download"
            staged.paths.append(temp_target)  # removed if anything below fails
            fetched = download_to_file(item.url, temp_target, media, cancel=cancel)
            name = unique_prefix + _base_name(item, fetched.content_type)
            final = landing / name
            os.replace(fetched.path, final)
        else:
            payload = item.base64 if item.base64 is not None else item.data_uri
            assert payload is not None
            if len(payload) * 3 // 4 > media.max_input_bytes + 3:  # refuse before decoding
                raise InputTooLarge(
                    f"input for node {item.node} field {item.field!r} is larger than MAX_INPUT_BYTES "
                    f"({media.max_input_bytes} bytes)", details={"limit_bytes": media.max_input_bytes},
                )
            try:
                data = decode_base64_payload(payload)
            except ValueError as exc:
                raise InvalidJobInput(f"input for node {item.node} field {item.field!r}: {exc}") from None
            name = unique_prefix + _base_name(item, _data_uri_type(item.data_uri) if item.data_uri else None)
            final = landing / name
            partial = final.with_name(f".{name}.part")
            partial.write_bytes(data)
            os.replace(partial, final)
        if input_dir is not None:
            staged.paths.append(final)
        else:
            client.upload(final, name)
        return name
    finally:
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
