"""Put a job's input files where ComfyUI's loaders find them, and take them away after.

With ComfyUI's folder on this machine (COMFY_PATH, also in attach mode) files are written
straight into its input/ folder; otherwise they go through POST /upload/image.

Every file gets a name unique to the job, so no job ever overwrites (or, cleaning up,
deletes) a file it did not write, and concurrent jobs never see each other's files:
* `images` (worker-comfyui) become `in-<12 hex>-img<index>-<name's last segment>`, and
  every workflow input whose value is the image's name (or ComfyUI's annotated form
  `<name> [input]`) is rewritten to the new name;
* `inputs` entries (URL, base64, data URI) become `in-<12 hex>-<index>-<name>`, written into
  `workflow[node].inputs[field]`.
A file is published under its name only if nothing has that name yet (a hard link, which
fails on an existing name), so even a collision could not replace someone's file.
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

from comfy.deadline import Deadline
from comfy.server.client import ComfyClient
from comfy.media.downloads import DownloadCancelled, InputTooLarge, download_to_file
from comfy.errors import InputWriteFailed, InvalidJobInput
from comfy.media.request import ImageInput, MediaInput, base64_decoded_size, decode_base64_payload
from comfy.media.settings import MediaSettings
from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.media.staging")

# Inputs fetched at once: a job with a video, an image and an audio file waits for the
# slowest, not for all three in turn; a handful keeps the pressure on one origin polite.
PARALLEL_INPUTS = 4
ANNOTATION = " [input]"  # ComfyUI's LoadImage also takes "name [input]" (folder_paths.annotated_filepath)


@dataclass
class StagedInputs:
    """Files written for one job, removed by cleanup()."""

    paths: list[Path] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # an image's name in the job -> its staged name

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


def _write_failed(what: str, folder: Path, exc: OSError) -> InputWriteFailed:
    return InputWriteFailed(
        f"could not write {what} into ComfyUI's input folder {folder}: {exc.strerror or exc}",
        details={"input": what, "folder": str(folder), "errno": exc.errno},
    )


def _discard(path: Path) -> None:
    """Remove a leftover partial file; a folder that refuses even that has already been reported."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def publish(source: Path, target: Path) -> None:
    """Give the finished file `source` the name `target`, never replacing an existing file.

    A hard link fails on an existing name; where the file system has no hard links the
    name is checked first (the names are unique per job, so that leaves no real race).
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise InputWriteFailed(f"input file {target.name!r} already exists in {target.parent}; not replaced") from None
    except OSError:
        if target.exists() or target.is_symlink():
            raise InputWriteFailed(f"input file {target.name!r} already exists in {target.parent}; not replaced") from None
        os.replace(source, target)
        return
    source.unlink()


def write_input_file(
    name: str, data: bytes, settings: WorkerSettings, client: ComfyClient, staged: StagedInputs, what: str = "",
) -> str:
    """Write one new file for the workflow under `name` (relative to ComfyUI's input folder);
    return the name it got (a remote ComfyUI may rename it); `what` names it in errors."""
    input_dir = settings.comfy_folder("input")
    if input_dir is not None:
        target = resolve_inside(input_dir, name)
        # Written aside, then published: ComfyUI never sees half a file.
        partial = target.with_name(f".{target.name}.part")
        try:
            partial.write_bytes(data)
            publish(partial, target)
        except OSError as exc:
            raise _write_failed(what or f"input file {name!r}", input_dir, exc) from None
        finally:
            _discard(partial)
        staged.paths.append(target)
        return name
    subfolder, _, filename = name.rpartition("/")
    with tempfile.NamedTemporaryFile(suffix=f"-{filename}") as tmp:
        tmp.write(data)
        tmp.flush()
        return _uploaded_name(client.upload(Path(tmp.name), filename, subfolder=subfolder), name)


def _uploaded_name(answer: dict[str, Any], asked: str) -> str:
    """The name ComfyUI stored an upload under (it renames rather than overwrite)."""
    name, subfolder = answer.get("name"), answer.get("subfolder") or ""
    if not isinstance(name, str) or not name:
        return asked
    return f"{subfolder}/{name}" if subfolder else name


def rewrite_image_references(workflow: dict[str, Any], names: dict[str, str]) -> None:
    """Point every input whose value is an image's job name at its staged name (in place;
    changed nodes are replaced, so the caller's dicts stay as given)."""
    if not names:
        return
    for node_id, node in list(workflow.items()):
        inputs = node.get("inputs") or {}
        changed = {}
        for key, value in inputs.items():
            if not isinstance(value, str):
                continue
            if value in names:
                changed[key] = names[value]
            elif value.endswith(ANNOTATION) and value[: -len(ANNOTATION)] in names:
                changed[key] = names[value[: -len(ANNOTATION)]] + ANNOTATION
        if changed:
            workflow[node_id] = {**node, "inputs": {**inputs, **changed}}


def stage_inputs(
    images: list[ImageInput], inputs: list[MediaInput], workflow: dict[str, Any], settings: WorkerSettings,
    client: ComfyClient, media: MediaSettings | None = None, cancel: threading.Event | None = None,
    object_info: dict[str, Any] | None = None, deadline: Deadline | None = None, check_targets: bool = True,
) -> StagedInputs:
    """Write the job's images (worker-comfyui `images`) under unique names and point the
    workflow at them, then fetch its `inputs` and point their nodes' fields at them (in
    `workflow`, whose changed nodes are replaced, not edited); `cancel` stops downloads,
    and `deadline` bounds them. `check_targets=False`: the caller checks the inputs' fields
    (`check_input_targets` on the graph as it was) once ComfyUI can list its nodes."""
    staged = StagedInputs()
    job_tag = uuid.uuid4().hex[:12]
    try:
        for index, image in enumerate(images):
            if deadline is not None and deadline.expired():
                raise deadline.exceeded("writing input images")
            staged_name = f"in-{job_tag}-img{index}-{image.name.rsplit('/', 1)[-1]}"
            staged.names[image.name] = write_input_file(
                staged_name, image.data, settings, client, staged, f"image {image.name!r}")
        rewrite_image_references(workflow, staged.names)
        unused = [name for name in staged.names if not _referenced(workflow, staged.names[name])]
        if unused:
            log.warning("images not referenced by any workflow input (by name or '<name> [input]'): %s", unused)
        if inputs:
            media = media or MediaSettings.from_env()
            if check_targets:
                check_input_targets(inputs, workflow, object_info if object_info is not None else client.object_info())
            names = _stage_all(inputs, job_tag, settings, client, media, staged, cancel, deadline)
            for item, name in zip(inputs, names):
                node = workflow[item.node]  # replaced, not edited: the caller's dicts stay as given
                workflow[item.node] = {**node, "inputs": {**(node.get("inputs") or {}), item.field: name}}
    except BaseException:
        staged.cleanup()
        raise
    return staged


def _referenced(workflow: dict[str, Any], staged_name: str) -> bool:
    return any(
        value in (staged_name, staged_name + ANNOTATION)
        for node in workflow.values() for value in (node.get("inputs") or {}).values()
    )


def _stage_all(
    items: list[MediaInput], job_tag: str, settings: WorkerSettings, client: ComfyClient,
    media: MediaSettings, staged: StagedInputs, cancel: threading.Event | None, deadline: Deadline | None,
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
            return stage_media_input(item, f"in-{job_tag}-{index}-", settings, client, media, staged, stop, deadline)
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
    deadline: Deadline | None = None,
) -> str:
    """Fetch or decode one input into ComfyUI's input folder; return the name it got."""
    input_dir = settings.comfy_folder("input")
    work_dir = Path(tempfile.mkdtemp(prefix="comfy-input-")) if input_dir is None else None
    landing = input_dir if input_dir is not None else work_dir
    assert landing is not None
    try:
        if item.url:
            temp_target = landing / f".{unique_prefix}download"
            staged.paths.append(temp_target)  # removed if anything below fails
            fetched = download_to_file(item.url, temp_target, media, cancel=cancel, deadline=deadline)
            name = unique_prefix + _base_name(item, fetched.content_type)
            final = landing / name
            publish(fetched.path, final)
        else:
            payload = item.base64 if item.base64 is not None else item.data_uri
            assert payload is not None
            if base64_decoded_size(payload) > media.max_input_bytes:  # refuse before decoding
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
            try:
                partial.write_bytes(data)
                publish(partial, final)
            finally:
                _discard(partial)
        if input_dir is not None:
            staged.paths.append(final)
            return name
        return _uploaded_name(client.upload(final, name), name)
    except OSError as exc:  # a read-only or full input folder: the worker's fault, said so
        raise _write_failed(f"the input for node {item.node} field {item.field!r}", landing, exc) from None
    finally:
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
