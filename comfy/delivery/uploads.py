"""Upload a set of outputs to one uploader, all or nothing, a few at a time."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from comfy.deadline import Deadline
from comfy.delivery.outputs import OutputFile
from comfy.delivery.request import storage_key_problem
from comfy.delivery.storage import StoredFile, UploadFailed, Uploader
from comfy.errors import JobError, OutputError

# (key in the caller's result, the file, its storage key, its content type)
Upload = tuple[Any, OutputFile, str, str]


def storage_key(item: OutputFile, prefix: str) -> str:
    """`<prefix><subfolder>/<filename>`: the object key of an output file."""
    assert item.path is not None
    return prefix + (f"{item.subfolder.strip('/')}/" if item.subfolder else "") + (item.filename or item.path.name)


def check_keys(uploads: list[Upload], prefix: str) -> None:
    """Refuse, naming the node, an output whose name a node reported is no safe object key.

    The prefix was checked when it was made (deliver.storage_prefix); what follows it comes
    from ComfyUI's history (subfolder and file name), which is untrusted.
    """
    for _, item, key, _ in uploads:
        relative = key[len(prefix):] if key.startswith(prefix) else key
        problem = storage_key_problem(relative)
        if problem:
            raise OutputError(
                f"output {relative[:200]!r} of node {item.node_id} ({item.class_type}) cannot be a storage key: "
                f"it {problem}",
                details={"node_id": item.node_id, "key": relative[:500], "problem": problem},
            )


def upload_all(uploads: list[Upload], uploader: Uploader, small_file_bytes: int = 0,
               parallel: int = 1, deadline: Deadline | None = None) -> dict[Any, StoredFile]:
    """Upload every file; on any failure remove what was uploaded and raise UploadFailed.

    Files up to `small_file_bytes` (one request each) go up `parallel` at a time, so a batch
    of frames costs a few round trips rather than one per file; larger files follow one at
    a time, each already sending `parallel` parts. Requests in flight never exceed `parallel`.
    """
    small, large = [], []
    for upload in uploads:
        (small if parallel > 1 and (upload[1].size_bytes or 0) <= small_file_bytes else large).append(upload)
    stored: dict[Any, StoredFile] = {}
    failure: BaseException | None = None
    if small:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(parallel, len(small)),
                                                   thread_name_prefix="upload") as pool:
            futures = [(index, pool.submit(upload_one, uploader, item, key, ctype, deadline))
                       for index, item, key, ctype in small]
            for index, future in futures:
                if future.cancelled():
                    continue
                try:
                    stored[index] = future.result()
                except BaseException as exc:  # noqa: BLE001 - kept, raised after the others are taken back
                    failure = failure or exc
                    for _, pending in futures:
                        pending.cancel()  # files not started yet are not sent at all
    try:
        for index, item, key, ctype in large if failure is None else ():
            stored[index] = upload_one(uploader, item, key, ctype, deadline)
    except BaseException as exc:
        failure = exc
    if failure is not None:
        for done in stored.values():  # never a partial success: take back this job's uploads
            uploader.delete(done.storage_path)
        raise failure
    return stored


def upload_one(uploader: Uploader, item: OutputFile, key: str, content_type: str,
               deadline: Deadline | None = None) -> StoredFile:
    """Upload one output; any failure becomes UploadFailed naming the file and the destination."""
    assert item.path is not None
    if deadline is not None and deadline.expired():
        raise deadline.exceeded(f"uploading outputs to {uploader.destination}")
    try:
        return uploader.upload(item.path, key, content_type)
    except UploadFailed as exc:
        exc.details = {**(exc.details or {}), "file": item.filename, "destination": uploader.destination}
        raise
    except JobError:  # the job's deadline: its own error
        raise
    except Exception as exc:  # noqa: BLE001 - a client library's own error: still name file and place
        raise UploadFailed(
            f"uploading output {item.filename!r} to {uploader.destination} failed: {type(exc).__name__}: {exc}",
            details={"file": item.filename, "destination": uploader.destination},
        ) from exc
