"""Results within RESULT_MAX_BYTES: inline delivery, and moving outputs to storage when they do not fit.

The decision is made from sizes alone (comfy.delivery.result.SizeModel), before any file is
read or encoded. Inline delivery: if everything fits it all stays inline; otherwise, with
storage configured, the outputs contributing most go to storage, largest first, until the rest
fits; without storage the job fails with `output_too_large`, naming the size, the budget and
how to configure storage. Storage delivery: every file is stored, and large texts follow the
same rule. Inline files are read, hashed and encoded on a small thread pool (hashlib and
pybase64 release the GIL), one file's raw bytes per thread at a time.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pybase64

from comfy.deadline import Deadline
from comfy.delivery.outputs import OutputFile
from comfy.delivery.result import RESERVE_BYTES, InlineData, SizeModel, assemble, is_file
from comfy.delivery.storage import StoredFile, Uploader
from comfy.delivery.uploads import check_keys, storage_key, upload_all
from comfy.errors import OutputTooLarge

ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))
# Kept for the worker's life: no thread start-up per job, and malloc's per-thread arenas are reused.
_ENCODE_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="encode")
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
METADATA_ADVICE = ("even with every output in storage the result's metadata does not fit: produce fewer outputs "
                   "per job or raise RESULT_MAX_BYTES (/runsync allows up to 20 MB)")


@dataclass(frozen=True)
class SpillTarget:
    """Storage for the outputs that do not fit an inline result; its uploader is made only when needed."""

    mode: str  # "s3" or "supabase"
    make_uploader: Callable[[], Uploader]
    prefix: str
    small_file_bytes: int = 0
    parallel: int = 1


def deliver_inline(files: list[OutputFile], max_bytes: int, spill: SpillTarget | None,
                   storage_advice: str, deadline: Deadline | None = None) -> dict[str, Any]:
    """The result with every output inline, or the largest in storage when they do not fit."""
    keys = storage_keys(files, spill.prefix if spill else "")
    model = SizeModel(files, max_bytes, keys)
    limit = max_bytes - RESERVE_BYTES
    stored: dict[int, StoredFile] = {}
    if spill is None:
        if model.total({}) > limit:
            raise too_large(files, model.total({}), max_bytes, storage_advice)
    elif choose_spill(files, model, limit, {}, spill.mode):
        uploader = spill.make_uploader()
        stored = fit_budget(files, model, limit, {}, keys, uploader, spill.mode, spill.small_file_bytes, spill.parallel,
                            deadline)
    inline = encode_files([(index, item) for index, item in enumerate(files) if is_file(item) and index not in stored])
    return assemble(files, inline, stored, spill.mode if stored else None, max_bytes)


def fit_budget(files: list[OutputFile], model: SizeModel, limit: int, stored: dict[int, StoredFile],
               keys: dict[int, str], uploader: Uploader, mode: str, small_file_bytes: int = 0,
               parallel: int = 1, deadline: Deadline | None = None) -> dict[int, StoredFile]:
    """Store outputs, largest first, until the result fits; every output stored so far on return.

    The first choice allows for URLs not known yet; once they are, the size is checked again and
    more outputs move if needed. If nothing more can move (OutputTooLarge) or an upload fails
    (UploadFailed), every upload of the job, those in `stored` too, is taken back.
    """
    stored = dict(stored)
    try:
        while (more := choose_spill(files, model, limit, stored, mode)):
            stored.update(store_outputs(files, more, keys, uploader, small_file_bytes, parallel, deadline))
    except BaseException:  # too large, or an upload failed: never a partial success
        for done in stored.values():
            uploader.delete(done.storage_path)
        raise
    return stored


def choose_spill(files: list[OutputFile], model: SizeModel, limit: int, stored: dict[int, StoredFile],
                 mode: str) -> list[int]:
    """Outputs to move to storage (largest first) so the result fits; [] if it fits already.

    Raises OutputTooLarge when it cannot fit even with every output in storage.
    """
    planned: dict[int, StoredFile | None] = dict(stored)
    total = model.total(planned, mode)
    if total <= limit:
        return []
    chosen: list[int] = []
    candidates = sorted((index for index in range(len(files)) if index not in planned),
                        key=lambda index: sum(model.inline_size(index)), reverse=True)
    for index in candidates:
        saved = sum(model.inline_size(index)) - sum(model.stored_size(index, mode=mode))
        if saved <= 0:
            break  # this one and the rest are smaller inline than as a stored entry
        chosen.append(index)
        total -= saved
        if total <= limit:
            return chosen
    raise too_large(files, total, limit + RESERVE_BYTES, METADATA_ADVICE)


def encode_files(items: list[tuple[int, OutputFile]]) -> dict[int, InlineData]:
    """Each file's base64 and sha256, by output index (a few files at a time)."""
    if len(items) <= 1:
        return {index: _encode(item) for index, item in items}
    return dict(_ENCODE_POOL.map(lambda pair: (pair[0], _encode(pair[1])), items))


def _encode(item: OutputFile) -> InlineData:
    assert item.path is not None
    raw = item.path.read_bytes()
    return InlineData(data=pybase64.b64encode_as_string(raw), sha256=hashlib.sha256(raw).hexdigest())


def storage_keys(files: list[OutputFile], prefix: str) -> dict[int, str]:
    """The key each output would get in storage: files by subfolder and name, texts as .txt."""
    return {index: storage_key(item, prefix) if is_file(item) else f"{prefix}{item.node_id}-{item.key}-{index:04d}.txt"
            for index, item in enumerate(files)}


def store_outputs(files: list[OutputFile], indexes: list[int], keys: dict[int, str], uploader: Uploader,
                  small_file_bytes: int = 0, parallel: int = 1, deadline: Deadline | None = None) -> dict[int, StoredFile]:
    """Upload these outputs (texts as UTF-8 .txt files); all or nothing."""
    with tempfile.TemporaryDirectory(prefix="comfy-text-") as folder:
        uploads = []
        for index in indexes:
            item = files[index]
            if is_file(item):
                uploads.append((index, item, keys[index], item.content_type or "application/octet-stream"))
            else:
                path = Path(folder) / f"{index:04d}.txt"
                path.write_text(item.text or "", encoding="utf-8")
                as_file = item.model_copy(update={"path": path, "filename": Path(keys[index]).name})
                uploads.append((index, as_file, keys[index], TEXT_CONTENT_TYPE))
        check_keys(uploads, "")
        return upload_all(uploads, uploader, small_file_bytes, parallel, deadline)


def too_large(files: list[OutputFile], total: int, max_bytes: int, advice: str) -> OutputTooLarge:
    """The error for a result over budget: its size, the budget, the largest outputs, what to do."""
    largest = sorted(files, key=lambda item: item.size_bytes or 0, reverse=True)[:5]
    return OutputTooLarge(
        f"the result would be {total} bytes, over RESULT_MAX_BYTES ({max_bytes}); {advice}",
        details={"result_bytes": total, "result_max_bytes": max_bytes,
                 "largest_outputs": [{"node_id": item.node_id, "filename": item.filename, "kind": item.kind.value,
                                      "size_bytes": item.size_bytes} for item in largest]},
    )
