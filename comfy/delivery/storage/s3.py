"""Upload to any S3-compatible bucket with boto3's multipart transfer, streamed from disk.

`upload_file` (a file name, not a file object) makes s3transfer read each part from disk
when it is sent, so memory stays near `chunk_bytes * concurrency` whatever the file
size. The sha256 is computed on a second thread reading the same file at the same time
(the second read comes from the page cache), so it costs almost no wall time.

A job's own endpoint was checked once (comfy.media.url_safety) and must not be resolved
again: urllib3 would look the name up anew for each connection, and a DNS answer that
changed meanwhile would receive the signed requests and the job's files. So for such an
endpoint every request boto3 signs goes out through `PinnedSender` (botocore's public
`before-send` hook, whose answer replaces botocore's own sending) to the checked address.
The job's deadline is checked before each request; each request's waits are bounded by it.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import boto3
import httpx
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from comfy.deadline import Deadline
from comfy.delivery.storage.base import StoredFile, UploadFailed, log, sha256_of_file, with_retries
from comfy.media.url_safety import CheckedURL, pinned_request_parts

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0
_UPLOAD_OPERATIONS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")

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
        pinned: CheckedURL | None = None,
        deadline: Deadline | None = None,
    ) -> None:
        """`pinned`: the checked endpoint of a job-chosen target, whose requests go only to the
        addresses it resolved to. `deadline`: the job's, which every upload request respects."""
        self.target = target
        self.destination = target.destination
        self.url_expiry_s = url_expiry_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.public_url_base = public_url_base
        self.deadline = deadline
        read_timeout = READ_TIMEOUT_S if deadline is None else max(1.0, min(READ_TIMEOUT_S, deadline.limit_s))
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
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=read_timeout,
                max_pool_connections=max(10, concurrency * 2),
            ),
        )
        self._sender = PinnedSender(pinned, read_timeout, max(10, concurrency * 2)) if pinned else None
        self.client.meta.events.register("before-send.s3", self._before_send)

    def _before_send(self, request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
        """No upload request starts after the job's deadline; a pinned endpoint's go out pinned."""
        if self.deadline is not None and event_name.rsplit(".", 1)[-1] in _UPLOAD_OPERATIONS and self.deadline.expired():
            raise self.deadline.exceeded(f"uploading outputs to {self.destination}")
        if self._sender is None:
            return None  # botocore sends it
        return self._sender.send(request, self.deadline)

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
                         self.retries, self.backoff_s, _retryable, self.deadline)
        except Exception:
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


class PinnedSender:
    """Sends botocore's signed requests to the addresses a URL check resolved, never to a
    fresh DNS answer: the socket goes to the IP, `Host` and TLS (SNI, certificate) name the host.

    Requests for any other host (an S3 redirect to another region's endpoint) are refused:
    that host was never checked.
    """

    def __init__(self, checked: CheckedURL, read_timeout_s: float, connections: int) -> None:
        self.checked = checked
        self._read_timeout_s = read_timeout_s
        self._http = httpx.Client(follow_redirects=False, trust_env=False,
                                  limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))

    def send(self, request: Any, deadline: Deadline | None) -> AWSResponse:
        parts = urlsplit(request.url)
        checked = self.checked
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if (parts.scheme, (parts.hostname or "").lower(), port) != (checked.scheme, checked.host, checked.port):
            raise UploadFailed(f"refused to send to {parts.hostname}:{port}: only the checked endpoint "
                               f"{checked.host}:{checked.port} may receive this job's requests")
        # Expect: 100-continue is not signed and httpx does not wait for a 100 anyway.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "expect")}
        left = float("inf") if deadline is None else max(deadline.remaining(), 0.001)
        timeout = httpx.Timeout(min(self._read_timeout_s, left), connect=min(CONNECT_TIMEOUT_S, left))
        start = request.body.tell() if hasattr(request.body, "tell") else None
        last: Exception | None = None
        for address in checked.addresses:
            url, host_header, extensions = pinned_request_parts(checked, address, request.url)
            if start is not None:
                request.body.seek(start)
            outgoing = self._http.build_request(request.method, url, headers={**headers, **host_header},
                                                content=_body(request.body), extensions=extensions, timeout=timeout)
            try:
                response = self._http.send(outgoing)
            except httpx.ConnectError as exc:
                last = exc  # another checked address may answer
                continue
            except httpx.TimeoutException as exc:
                raise ReadTimeoutError(endpoint_url=request.url, error=exc) from exc
            except httpx.TransportError as exc:
                raise ConnectionClosedError(endpoint_url=request.url, request=request, response=None) from exc
            return AWSResponse(request.url, response.status_code, dict(response.headers.multi_items()),
                               _ReadBody(response.content))
        raise EndpointConnectionError(endpoint_url=request.url, error=last)


def _body(body: Any) -> bytes | Iterator[bytes]:
    """botocore's body (bytes, str, a file-like part of a file, or None) as httpx content."""
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()

    def chunks() -> Iterator[bytes]:
        while chunk := body.read(256 * 1024):
            yield chunk
    return chunks()


class _ReadBody:
    """The finished body of a response, shaped as botocore reads urllib3's (`stream`, `read`)."""

    def __init__(self, content: bytes) -> None:
        self._content = content
        self._offset = 0

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.read()

    def read(self, amt: int | None = None) -> bytes:
        end = len(self._content) if amt is None else self._offset + amt
        chunk, self._offset = self._content[self._offset:end], min(end, len(self._content))
        return chunk
