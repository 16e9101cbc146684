"""Hand the outputs back in the job result: inline, or uploaded to S3 or Supabase Storage.

The result's shape and size: comfy.delivery.result. Inline delivery (comfy.delivery.budget):
each file's base64 once, in worker-comfyui's `images` list, within RESULT_MAX_BYTES; the
largest go to storage when configured and the rest would not fit. Storage delivery: every file
uploaded (comfy.delivery.storage); `outputs` entries carry url, storage_path, bucket, size_bytes,
sha256 and content_type, `images` entries the URL. Either every file is delivered or the job
fails: a failed upload takes back the files already uploaded for the job and fails it with an
error naming the file and destination.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy.delivery.budget import (METADATA_ADVICE, SpillTarget, choose_spill, deliver_inline, fit_budget,
                                   storage_keys, too_large)
from comfy.delivery.outputs import OutputFile, OutputKind
from comfy.deadline import Deadline
from comfy.delivery.poster import POSTER_CONTENT_TYPE, POSTER_TIMEOUT_S, make_poster
from comfy.delivery.request import OutputRequest, storage_key_problem
from comfy.delivery.result import RESERVE_BYTES, SizeModel, assemble, is_file, json_size
from comfy.delivery.storage import S3Target, S3Uploader, SupabaseUploader, Uploader
from comfy.delivery.uploads import check_keys, upload_all
from comfy.errors import OutputError
from comfy.media.settings import MediaSettings
from comfy.media.url_safety import check_url

STORAGE_ADVICE = (
    "configure storage and the largest files go there automatically: S3 (BUCKET_ENDPOINT_URL, "
    "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY) or Supabase Storage (SUPABASE_URL, "
    "SUPABASE_SERVICE_ROLE_KEY, SUPABASE_STORAGE_BUCKET), or give output.mode 's3' with the job's own "
    "credentials; /runsync callers may raise RESULT_MAX_BYTES up to 20 MB"
)


@dataclass(frozen=True)
class DeliveryPlan:
    """Where one job's outputs will go, settled before the workflow runs.

    Made by `plan_delivery` before inputs are fetched, so a job whose storage is not
    configured, or whose endpoint is refused, fails at once instead of after a long run.
    """

    mode: str
    uploader: Uploader | None  # None for inline
    prefix: str
    result_max_bytes: int
    spill: SpillTarget | None = None  # inline: where outputs go that do not fit the result
    small_file_bytes: int = 0  # files up to this size are sent in one request each...
    parallel: int = 1  # ...this many at a time
    poster_python: str | None = None  # ComfyUI's Python, to make video posters; None: no posters
    deadline: Deadline | None = None  # the job's: no upload starts after it

    def deliver(self, files: list[OutputFile]) -> dict[str, Any]:
        """Deliver every file, or raise naming the file and the destination."""
        if self.uploader is None:
            return deliver_inline(files, self.result_max_bytes, self.spill, STORAGE_ADVICE, self.deadline)
        with tempfile.TemporaryDirectory(prefix="comfy-posters-") as folder:
            posters = make_posters(files, Path(folder), self.poster_python, self.deadline) if self.poster_python else {}
            return deliver_to_storage(files, self.uploader, self.prefix, self.mode, self.small_file_bytes,
                                      self.parallel, posters, self.result_max_bytes, self.deadline)


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
        spill = None
        if media.supabase_configured or media.s3_configured:
            # Built only if a result does not fit: most inline jobs never pay for a storage client.
            spill_mode = "supabase" if media.supabase_configured else "s3"
            spill = SpillTarget(spill_mode, lambda: make_uploader(spill_mode, OutputRequest(), media, deadline),
                                storage_prefix(request, media, job_key), media.multipart_chunk_bytes,
                                media.upload_concurrency)
        return DeliveryPlan("inline", None, "", media.result_max_bytes, spill)
    prefix = storage_prefix(request, media, job_key)
    return DeliveryPlan(mode, make_uploader(mode, request, media, deadline), prefix,
                        media.result_max_bytes, small_file_bytes=media.multipart_chunk_bytes,
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
            media.upload_retries, media.retry_backoff_s, s3_route, deadline=deadline,
        )
    except Exception as exc:  # noqa: BLE001 - the client refuses a malformed URL or key with its own type
        raise OutputError(f"cannot use Supabase Storage at {media.supabase_url!r}: {exc}") from exc


def deliver_to_storage(
    files: list[OutputFile], uploader: Uploader, prefix: str, mode: str,
    small_file_bytes: int = 0, parallel: int = 1, posters: dict[int, Path] | None = None,
    max_bytes: int = 10**12, deadline: Deadline | None = None,
) -> dict[str, Any]:
    """Upload every file (comfy.delivery.uploads.upload_all: all or nothing, a few at a time).

    `posters` (JPEGs by output index) go up beside their videos as `<video key>.poster.jpg`
    and appear as the video's `poster` entry. Texts stay inline unless the result would pass
    `max_bytes`; then the largest go to storage too (comfy.delivery.budget). A result whose
    metadata alone would not fit fails with `output_too_large`, before any upload when the
    estimate says so, else with the job's uploads taken back.
    """
    keys = storage_keys(files, prefix)
    model = SizeModel(files, max_bytes, keys)
    limit = max_bytes - RESERVE_BYTES
    file_indexes = [index for index, item in enumerate(files) if is_file(item)]
    choose_spill(files, model, limit, {index: None for index in file_indexes}, mode)  # raises if it cannot fit
    uploads: list[tuple[Any, OutputFile, str, str]] = [
        (index, files[index], keys[index], files[index].content_type or "application/octet-stream")
        for index in file_indexes
    ]
    for index, path in (posters or {}).items():
        video = files[index]
        poster = OutputFile(node_id=video.node_id, class_type=video.class_type, key=video.key, kind=OutputKind.IMAGE,
                            filename=f"{video.filename}.poster.jpg", content_type=POSTER_CONTENT_TYPE,
                            size_bytes=path.stat().st_size, path=path)
        uploads.append((("poster", index), poster, keys[index] + ".poster.jpg", POSTER_CONTENT_TYPE))
    check_keys(uploads, prefix)  # before anything is sent: a bad key fails the job with nothing uploaded
    uploaded = upload_all(uploads, uploader, small_file_bytes, parallel, deadline)
    poster_entries = {key[1]: done for key, done in uploaded.items() if isinstance(key, tuple)}
    stored = {key: done for key, done in uploaded.items() if isinstance(key, int)}
    try:
        stored = fit_budget(files, model, limit, stored, keys, uploader, mode, small_file_bytes, parallel, deadline)
        result = assemble(files, {}, stored, mode, max_bytes, poster_entries)
        if (size := json_size(result)) > limit:  # posters are not in the size model; no base64 here: cheap
            for done in stored.values():
                uploader.delete(done.storage_path)
            raise too_large(files, size, max_bytes, METADATA_ADVICE)
    except BaseException:  # fit_budget took back the files; the posters go too
        for done in poster_entries.values():
            uploader.delete(done.storage_path)
        raise
    return result
