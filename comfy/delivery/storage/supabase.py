"""Upload to Supabase Storage; return public or signed URLs.

Routes (docs/media.md says why):
* with Storage's S3 keys (SUPABASE_S3_ACCESS_KEY_ID/SECRET): Storage's S3-compatible
  endpoint with boto3 multipart, any size, parts read from disk;
* without them, files up to 6 MB: the standard upload (`POST /storage/v1/object/<bucket>/<path>`)
  through the supabase client, given an open file so httpx streams it;
* without them, larger files: a resumable (TUS) upload in 6 MB chunks
  (comfy.delivery.storage.tus), resumed after a cut connection, any size the plan allows.
URLs: public ones are built without a request; signed ones come from
`POST /storage/v1/object/sign/<bucket>/<path>` with the service key.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from supabase import Client, create_client

from comfy.deadline import Deadline
from comfy.delivery.storage.base import StoredFile, UploadFailed, log, sha256_of_file, with_retries
from comfy.delivery.storage.s3 import S3Target, S3Uploader
from comfy.delivery.storage.tus import TUS_CHUNK_BYTES, TusUpload

# Connect fast or fail; a chunk of 6 MB may take a while on a slow link, silence of 60 s is a dead one.
TUS_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


class SupabaseUploader:
    """Stores files in one Supabase Storage bucket."""

    def __init__(
        self,
        supabase_url: str,
        service_role_key: str,
        bucket: str,
        public: bool,
        url_expiry_s: int,
        retries: int,
        backoff_s: float,
        s3_uploader: S3Uploader | None = None,
        tus_timeout: httpx.Timeout = TUS_TIMEOUT,
        deadline: Deadline | None = None,
    ) -> None:
        self.supabase_url = supabase_url.rstrip("/")
        self.bucket = bucket
        self.public = public
        self.url_expiry_s = url_expiry_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.s3 = s3_uploader
        self.deadline = deadline  # the job's: no attempt or backoff past it
        self.client: Client = create_client(self.supabase_url, service_role_key)
        self._service_key = service_role_key
        self._tus_timeout = tus_timeout
        self._tus_client: httpx.Client | None = None
        self._tus_lock = threading.Lock()
        self.destination = f"Supabase Storage bucket {bucket!r} at {self.supabase_url}"

    @classmethod
    def s3_route(cls, supabase_url: str, endpoint_url: str | None, access_key_id: str, secret_access_key: str,
                 region: str, bucket: str, chunk_bytes: int, concurrency: int, retries: int,
                 backoff_s: float, deadline: Deadline | None = None) -> S3Uploader:
        """The S3 uploader for Storage's S3 endpoint (default <SUPABASE_URL>/storage/v1/s3)."""
        target = S3Target(
            bucket=bucket, endpoint_url=endpoint_url or f"{supabase_url.rstrip('/')}/storage/v1/s3",
            access_key_id=access_key_id, secret_access_key=secret_access_key, region=region, path_style=True,
        )
        return S3Uploader(target, url_expiry_s=3600, chunk_bytes=chunk_bytes, concurrency=concurrency,
                          retries=retries, backoff_s=backoff_s, deadline=deadline)

    def upload(self, path: Path, key: str, content_type: str) -> StoredFile:
        """Upload `path` to `key`; raise UploadFailed naming the file and the bucket."""
        if self.s3 is not None:
            stored = self.s3.upload(path, key, content_type)
            size, digest = stored.size_bytes, stored.sha256
        elif (size := path.stat().st_size) > TUS_CHUNK_BYTES:
            digest = self.upload_resumable(path, key, content_type)
        else:
            digest = sha256_of_file(path)

            def send() -> None:
                with open(path, "rb") as body:  # an open file: httpx streams it from disk
                    self.client.storage.from_(self.bucket).upload(
                        key, body, {"content-type": content_type, "upsert": "true"}
                    )

            with_retries(send, f"uploading output {path.name!r} to {self.destination} as {key!r}",
                         self.retries, self.backoff_s, _retryable, self.deadline)
        url = with_retries(lambda: self.url_for(key), f"signing the URL of {key!r} in {self.destination}",
                           self.retries, self.backoff_s, _retryable, self.deadline)
        return StoredFile(url=url, storage_path=key, bucket=self.bucket, size_bytes=size, sha256=digest,
                          content_type=content_type)

    def upload_resumable(self, path: Path, key: str, content_type: str) -> str:
        """A TUS upload through `<SUPABASE_URL>/storage/v1/upload/resumable`; the sha256 of what was sent."""
        upload = TusUpload(self._tus(), f"{self.supabase_url}/storage/v1/upload/resumable",
                           {"apikey": self._service_key, "Authorization": f"Bearer {self._service_key}"},
                           path, self.bucket, key, content_type, upsert=True, retries=self.retries,
                           backoff_s=self.backoff_s, deadline=self.deadline)
        try:
            return upload.run()
        except UploadFailed as exc:
            raise UploadFailed(f"uploading output {path.name!r} to {self.destination} as {key!r}: {exc.message}",
                               details=exc.details) from exc

    def _tus(self) -> httpx.Client:
        with self._tus_lock:  # uploads of one job may run on several threads
            if self._tus_client is None:
                self._tus_client = httpx.Client(timeout=self._tus_timeout)
            return self._tus_client

    def url_for(self, key: str) -> str:
        bucket = self.client.storage.from_(self.bucket)
        if self.public:
            return bucket.get_public_url(key)
        signed = bucket.create_signed_url(key, self.url_expiry_s)
        url = signed.get("signedURL") or signed.get("signedUrl")
        if not url:
            raise UploadFailed(f"Supabase Storage returned no signed URL for {key!r} in bucket {self.bucket!r}")
        return url

    def delete(self, key: str) -> None:
        try:
            if self.s3 is not None:
                self.s3.delete(key)
            else:
                self.client.storage.from_(self.bucket).remove([key])
        except Exception as exc:  # noqa: BLE001 - best effort after another failure
            log.warning("could not remove %s from %s: %s", key, self.destination, exc)


def _retryable(exc: Exception) -> bool:
    """4xx answers (bad key, missing bucket, too large) will not change on a retry."""
    status = getattr(exc, "status", None)
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    return status is None or status >= 500 or status in (408, 429)
