"""Upload to any S3-compatible bucket with boto3's multipart transfer, streamed from disk.

`upload_file` (a file name, not a file object) makes s3transfer read each part from disk
when it is sent, so memory stays near `chunk_bytes * concurrency` whatever the file
size. The sha256 is computed on a second thread reading the same file at the same time
(the second read comes from the page cache), so it costs almost no wall time.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from comfy.delivery.storage.base import StoredFile, UploadFailed, log, sha256_of_file, with_retries

_HASH_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")


@dataclass(frozen=True)
class S3Target:
    """A bucket and how to reach it."""

    bucket: str
    endpoint_url: str | None  # None: AWS itself
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    path_style: bool = True  # most S3-compatible servers (and Supabase) want path-style

    @classmethod
    def from_endpoint(cls, endpoint_url: str | None, bucket: str | None, **kwargs) -> "S3Target":
        """RunPod's BUCKET_ENDPOINT_URL may carry the bucket as its path: https://host/bucket."""
        if endpoint_url:
            parts = urlsplit(endpoint_url)
            path_bucket = parts.path.strip("/").split("/")[0] if parts.path.strip("/") else None
            if path_bucket and not bucket:
                bucket = path_bucket
                endpoint_url = f"{parts.scheme}://{parts.netloc}"
        if not bucket:
            raise UploadFailed(
                "no S3 bucket named: set BUCKET_NAME, put the bucket in BUCKET_ENDPOINT_URL "
                "(https://host/bucket) or give output.bucket in the job input"
            )
        return cls(bucket=bucket, endpoint_url=endpoint_url, **kwargs)

    @property
    def destination(self) -> str:
        host = urlsplit(self.endpoint_url).netloc if self.endpoint_url else "AWS S3"
        return f"s3 bucket {self.bucket!r} at {host}"


class S3Uploader:
    """Multipart uploads to one bucket, presigned GET URLs back."""

    def __init__(
        self,
        target: S3Target,
        url_expiry_s: int,
        chunk_bytes: int,
        concurrency: int,
        retries: int,
        backoff_s: float,
        public_url_base: str | None = None,
    ) -> None:
        self.target = target
        self.destination = target.destination
        self.url_expiry_s = url_expiry_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.public_url_base = public_url_base
        self.transfer_config = TransferConfig(
            multipart_threshold=chunk_bytes,
            multipart_chunksize=chunk_bytes,
            max_concurrency=concurrency,
            use_threads=True,
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=target.endpoint_url,
            aws_access_key_id=target.access_key_id,
            aws_secret_access_key=target.secret_access_key,
            region_name=target.region,
            config=Config(
                s3={"addressing_style": "path" if target.path_style else "auto"},
                retries={"mode": "standard", "max_attempts": 3},  # per request (one part); whole-file retries are ours
                connect_timeout=10,
                read_timeout=120,
                max_pool_connections=max(10, concurrency * 2),
            ),
        )

    def upload(self, path: Path, key: str, content_type: str) -> StoredFile:
        """Upload `path` to `key`; raise UploadFailed naming the file and the bucket."""
        size = path.stat().st_size
        digest = _HASH_POOL.submit(sha256_of_file, path)

        def send() -> None:
            self.client.upload_file(
                str(path), self.target.bucket, key,
                ExtraArgs={"ContentType": content_type}, Config=self.transfer_config,
            )

        try:
            with_retries(send, f"uploading output {path.name!r} to {self.destination} as {key!r}",
                         self.retries, self.backoff_s, _retryable)
        except UploadFailed:
            digest.cancel()
            raise
        return StoredFile(
            url=self.url_for(key), storage_path=key, bucket=self.target.bucket,
            size_bytes=size, sha256=digest.result(), content_type=content_type,
        )

    def url_for(self, key: str) -> str:
        """A public URL when a public base is known, else a presigned GET URL."""
        if self.public_url_base:
            return f"{self.public_url_base.rstrip('/')}/{key}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.target.bucket, "Key": key}, ExpiresIn=self.url_expiry_s
        )

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.target.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - best effort after another failure
            log.warning("could not remove %s from %s: %s", key, self.destination, exc)


def _retryable(exc: Exception) -> bool:
    """Credentials, permissions and missing buckets do not fix themselves; the rest may."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or (
            400 <= status < 500 and status not in (408, 429)
        ):
            return False
    # s3transfer wraps part failures in S3UploadFailedError, whose text carries the code.
    text = str(exc)
    return not any(code in text for code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"))
