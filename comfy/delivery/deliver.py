"""Hand the outputs back in the job result: inline, or uploaded to S3 or Supabase Storage.

Inline delivery: every file as base64, in worker-comfyui's `images` list (every file,
not only images, so its clients keep working) and in the richer `outputs` list.
Storage delivery: every file uploaded (comfy.delivery.storage); `outputs` entries carry url,
storage_path, bucket, size_bytes, sha256 and content_type, `images` entries the URL.
Either every file is delivered or the job fails: a failed upload takes back the files
already uploaded for the job and fails it with an error naming the file and destination.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pybase64

from comfy.delivery.outputs import OutputFile, OutputKind
from comfy.deadline import Deadline
from comfy.delivery.poster import POSTER_CONTENT_TYPE, POSTER_TIMEOUT_S, make_poster
from comfy.delivery.request import OutputRequest, storage_key_problem
from comfy.delivery.storage import S3Target, S3Uploader, StoredFile, SupabaseUploader, UploadFailed, Uploader
from comfy.errors import JobError, OutputError
from comfy.media.settings import MediaSettings
from comfy.media.url_safety import check_url


def deliver_inline(files: list[OutputFile], max_bytes: int | None = None, storage_hint: str = "") -> dict[str, Any]:
    """The result's `images` and `outputs` with file contents inline.

    Over `max_bytes` (all files together) nothing is read and OutputError says how to
    configure storage instead.
    """
    if max_bytes is not None:
        total = sum(f.size_bytes or 0 for f in files if f.kind is not OutputKind.TEXT)
        if total > max_bytes:
            raise OutputError(
                f"outputs are {total} bytes, over INLINE_MAX_BYTES ({max_bytes}) for inline delivery; "
                + (storage_hint or "configure storage: set output.mode to 's3' (BUCKET_ENDPOINT_URL, "
                   "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, or per-request output credentials) or 'supabase' "
                   "(SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_STORAGE_BUCKET)"),
                details={"total_bytes": total, "inline_max_bytes": max_bytes},
            )
    images: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for item in files:
        entry = item.model_dump(mode="json", exclude_none=True)
        if item.kind is not OutputKind.TEXT and item.path is not None:
            raw = item.path.read_bytes()
            data = pybase64.b64encode_as_string(raw)
            entry["data"] = data
            entry["sha256"] = hashlib.sha256(raw).hexdigest()
            images.append({"filename": item.filename, "type": "base64", "data": data})
        outputs.append(entry)
    return {"images": images, "outputs": outputs}


@dataclass(frozen=True)
class DeliveryPlan:
    """Where one job's outputs will go, settled before the workflow runs.

    Made by `plan_delivery` before inputs are fetched, so a job whose storage is not
    configured, or whose endpoint is refused, fails at once instead of after a long run.
    """

    mode: str
    uploader: Uploader | None  # None for inline
    prefix: str
    inline_max_bytes: int
    inline_hint: str = ""
    small_file_bytes: int = 0  # files up to this size are sent in one request each...
    parallel: int = 1  # ...this many at a time
    poster_python: str | None = None  # ComfyUI's Python, to make video posters; None: no posters
    deadline: Deadline | None = None  # the job's: no upload starts after it

    def deliver(self, files: list[OutputFile]) -> dict[str, Any]:
        """Deliver every file, or raise naming the file and the destination."""
        if self.uploader is None:
            return deliver_inline(files, self.inline_max_bytes, self.inline_hint)
        with tempfile.TemporaryDirectory(prefix="comfy-posters-") as folder:
            posters = make_posters(files, Path(folder), self.poster_python, self.deadline) if self.poster_python else {}
            return deliver_to_storage(files, self.uploader, self.prefix, self.mode,
                                      self.small_file_bytes, self.parallel, posters, self.deadline)


def make_posters(files: list[OutputFile], folder: Path, python: str,
                 deadline: Deadline | None = None) -> dict[int, Path]:
    """The first frame of every video output, as JPEG files in `folder`, by output index
    (none once the job's deadline has passed: a poster is a convenience)."""
    posters: dict[int, Path] = {}
    for index, item in enumerate(files):
        if item.kind is OutputKind.VIDEO and item.path is not None:
            if deadline is not None and deadline.remaining() < 1.0:
                break
            timeout_s = POSTER_TIMEOUT_S if deadline is None else deadline.bound(POSTER_TIMEOUT_S)
            made = make_poster(item.path, folder / f"{index:04d}.jpg", python, timeout_s)
            if made is not None:
                posters[index] = made
    return posters


def plan_delivery(
    request: OutputRequest, media: MediaSettings, job_key: str, comfy_python: str | None = None,
    deadline: Deadline | None = None,
) -> DeliveryPlan:
    """Settle the mode and build the uploader; raise OutputError (or UnsafeURL) if it cannot work.

    `comfy_python` (ComfyUI's interpreter) lets storage modes add video posters unless the job
    turns them off (`output.poster: false`). `deadline`: the job's, which uploads respect.
    """
    mode = request.mode or media.default_output_mode()
    if mode == "inline":
        hint = ""
        if media.s3_configured or media.supabase_configured:
            configured = "supabase" if media.supabase_configured else "s3"
            hint = f"storage is configured: ask for it with output.mode '{configured}' (or unset OUTPUT_MODE=inline)"
        return DeliveryPlan("inline", None, "", media.inline_max_bytes, hint)
    prefix = storage_prefix(request, media, job_key)
    return DeliveryPlan(mode, make_uploader(mode, request, media, deadline), prefix,
                        media.inline_max_bytes, small_file_bytes=media.multipart_chunk_bytes,
                        parallel=media.upload_concurrency,
                        poster_python=comfy_python if request.poster is not False else None, deadline=deadline)


def storage_prefix(request: OutputRequest, media: MediaSettings, job_key: str) -> str:
    """The job's own prefix, or OUTPUT_PREFIX + `<task or job id>/` (keys never collide across jobs).

    Every segment is checked (no '..', no absolute path, no control or bidi characters),
    whichever of the job, the environment or the task id it came from.
    """
    if request.prefix is not None:
        prefix = request.prefix
    else:
        base = (media.storage_prefix or "").strip("/")
        prefix = f"{base}/{job_key}/" if base else f"{job_key}/"
    problem = storage_key_problem(prefix.rstrip("/")) if prefix.strip("/") else None
    if problem:
        source = "output.prefix" if request.prefix is not None else "OUTPUT_PREFIX and the task or job id"
        raise OutputError(f"storage prefix {prefix!r} (from {source}) {problem}",
                          details={"prefix": prefix, "problem": problem})
    return prefix


def make_uploader(mode: str, request: OutputRequest, media: MediaSettings, deadline: Deadline | None = None) -> Uploader:
    """The uploader for `mode`, from the job's output settings over the environment's."""
    expiry = request.url_expiry_s or media.url_expiry_s
    if mode == "s3":
        endpoint = request.endpoint_url or media.s3_endpoint_url
        pinned = None
        if request.endpoint_url:
            # A job-supplied endpoint is a URL the worker will send data to: same checks as inputs,
            # and its uploads go to the address checked here (S3Uploader's PinnedSender).
            pinned = check_url(request.endpoint_url, allow_private=media.allow_private_urls, deadline=deadline)
        key_id = request.access_key_id or media.s3_access_key_id
        secret = request.secret_access_key or media.s3_secret_access_key
        if not (endpoint or request.bucket or media.s3_bucket) or not (key_id and secret):
            raise OutputError(
                "output mode 's3' has no bucket or credentials: set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and "
                "BUCKET_SECRET_ACCESS_KEY, or give output.endpoint_url, bucket, access_key_id and secret_access_key"
            )
        target = S3Target.from_endpoint(
            endpoint, request.bucket or (None if request.endpoint_url else media.s3_bucket),
            access_key_id=key_id, secret_access_key=secret, region=request.region or media.s3_region,
        )
        return S3Uploader(target, expiry, media.multipart_chunk_bytes, media.upload_concurrency,
                          media.upload_retries, media.retry_backoff_s, pinned=pinned, deadline=deadline)
    bucket = request.bucket or media.supabase_bucket
    if not (media.supabase_url and media.supabase_service_role_key and bucket):
        raise OutputError(
            "output mode 'supabase' is not configured: set SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY and "
            "SUPABASE_STORAGE_BUCKET (or output.bucket)"
        )
    s3_route = None
    if media.supabase_s3_access_key_id and media.supabase_s3_secret_access_key:
        s3_route = SupabaseUploader.s3_route(
            media.supabase_url, media.supabase_s3_endpoint_url, media.supabase_s3_access_key_id,
            media.supabase_s3_secret_access_key, media.supabase_s3_region, bucket,
            media.multipart_chunk_bytes, media.upload_concurrency, media.upload_retries, media.retry_backoff_s,
            deadline,
        )
    public = request.public if request.public is not None else media.supabase_public
    try:
        return SupabaseUploader(
            media.supabase_url, media.supabase_service_role_key, bucket, public, expiry,
            media.upload_retries, media.retry_backoff_s, media.supabase_standard_upload_max_bytes, s3_route,
            deadline=deadline,
        )
    except Exception as exc:  # noqa: BLE001 - the client refuses a malformed URL or key with its own type
        raise OutputError(f"cannot use Supabase Storage at {media.supabase_url!r}: {exc}") from exc


def deliver_to_storage(
    files: list[OutputFile], uploader: Uploader, prefix: str, mode: str,
    small_file_bytes: int = 0, parallel: int = 1, posters: dict[int, Path] | None = None,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """Upload every file; on any failure remove what was uploaded and raise UploadFailed.

    Files up to `small_file_bytes` (one request each) go up `parallel` at a time, so a batch
    of frames costs a few round trips rather than one per file; larger files follow one at
    a time, each already sending `parallel` parts. Requests in flight never exceed `parallel`.
    `posters` (JPEGs by output index) go up beside their videos as `<video key>.poster.jpg`
    and appear as the video's `poster` entry.
    """
    uploads: list[tuple[Any, OutputFile, str, str]] = [
        (index, item, _storage_key(item, prefix), item.content_type or "application/octet-stream")
        for index, item in enumerate(files)
        if item.kind is not OutputKind.TEXT and item.path is not None
    ]
    for index, path in (posters or {}).items():
        video = files[index]
        poster = OutputFile(node_id=video.node_id, class_type=video.class_type, key=video.key, kind=OutputKind.IMAGE,
                            filename=f"{video.filename}.poster.jpg", content_type=POSTER_CONTENT_TYPE,
                            size_bytes=path.stat().st_size, path=path)
        uploads.append((("poster", index), poster, _storage_key(video, prefix) + ".poster.jpg", POSTER_CONTENT_TYPE))
    small, large = [], []
    for upload in uploads:
        (small if parallel > 1 and (upload[1].size_bytes or 0) <= small_file_bytes else large).append(upload)
    stored: dict[Any, StoredFile] = {}  # by output index, or ("poster", index)
    failure: BaseException | None = None
    if small:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(parallel, len(small)),
                                                   thread_name_prefix="upload") as pool:
            futures = [(index, pool.submit(_upload_one, uploader, item, key, ctype, deadline))
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
            stored[index] = _upload_one(uploader, item, key, ctype, deadline)
    except BaseException as exc:
        failure = exc
    if failure is not None:
        for done in stored.values():  # never a partial success: take back this job's uploads
            uploader.delete(done.storage_path)
        raise failure
    images: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for index, item in enumerate(files):
        entry = item.model_dump(mode="json", exclude_none=True)
        if index in stored:
            entry.update(stored[index].model_dump(mode="json"))
            images.append({"filename": item.filename, "type": f"{mode}_url", "data": stored[index].url})
        if ("poster", index) in stored:
            entry["poster"] = stored[("poster", index)].model_dump(mode="json")
        outputs.append(entry)
    return {"images": images, "outputs": outputs}


def _storage_key(item: OutputFile, prefix: str) -> str:
    """`<prefix><subfolder>/<filename>`; a name a node reported that is no safe key is refused."""
    assert item.path is not None
    relative = (f"{item.subfolder.strip('/')}/" if item.subfolder else "") + (item.filename or item.path.name)
    problem = storage_key_problem(relative)
    if problem:
        raise OutputError(
            f"output {relative[:200]!r} of node {item.node_id} ({item.class_type}) cannot be a storage key: it {problem}",
            details={"node_id": item.node_id, "key": relative[:500], "problem": problem},
        )
    return prefix + relative


def _upload_one(uploader: Uploader, item: OutputFile, key: str, content_type: str,
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
