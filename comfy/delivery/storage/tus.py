"""Resumable uploads (the TUS protocol) to Supabase Storage's standard endpoint.

Supabase Storage implements TUS 1.0.0 at `<SUPABASE_URL>/storage/v1/upload/resumable`:
* `POST` with `Upload-Length` and `Upload-Metadata` (bucketName, objectName, contentType,
  cacheControl; values base64) and `x-upsert` creates an upload: 201 with its URL in `Location`;
* `PATCH <Location>` with `Upload-Offset` and `Content-Type: application/offset+octet-stream`
  sends one chunk (6 MB, Supabase's required size; the last may be shorter): 204 with the new
  `Upload-Offset`; a wrong offset or a concurrent request on the same upload answers 409;
* `HEAD <Location>`: 200 with the `Upload-Offset` the server holds.
A chunk cut off by a dropped connection, a timeout, a 5xx, 409 or 423 is resumed from the
offset the server reports (HEAD), after a backoff; failures in a row are bounded by `retries`.
The chunk is read from disk at that offset, so memory stays at one chunk whatever the file size,
and the sha256 is computed over the bytes as they are sent (in order, so one pass).

A hand-written client rather than tuspy: tuspy 1.1.0 calls `requests` without a timeout (a
stalled connection would hang the job past its deadline) and opens a new connection per chunk;
this one shares the worker's httpx (timeouts, keep-alive) and is a few dozen lines of protocol.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from comfy.deadline import Deadline
from comfy.delivery.storage.base import UploadFailed

log = logging.getLogger("comfy.delivery.storage.tus")

TUS_VERSION = "1.0.0"
TUS_CHUNK_BYTES = 6 * 1024 * 1024  # Supabase: "6MB chunks" (tus-js-client's chunkSize: 6 * 1024 * 1024)
RETRYABLE_STATUS = frozenset({408, 409, 423, 429, 500, 502, 503, 504})


class TusError(Exception):
    """A TUS request failed; `status` is the HTTP status when there was an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _metadata(values: dict[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode('ascii')}" for key, value in values.items())


def _error_text(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return f"HTTP {response.status_code}" + (f": {text[:300]}" if text else "")


class TusUpload:
    """One file to one object, resumable; `run()` returns the sha256 of what was sent."""

    def __init__(self, client: httpx.Client, endpoint: str, headers: dict[str, str], path: Path, bucket: str,
                 object_name: str, content_type: str, upsert: bool = True, chunk_bytes: int = TUS_CHUNK_BYTES,
                 retries: int = 3, backoff_s: float = 1.0, cache_control_s: int = 3600,
                 deadline: Deadline | None = None) -> None:
        self.client = client
        self.endpoint = endpoint
        self.headers = {**headers, "Tus-Resumable": TUS_VERSION}
        self.path = path
        self.size = path.stat().st_size
        self.metadata = {"bucketName": bucket, "objectName": object_name, "contentType": content_type,
                         "cacheControl": str(cache_control_s)}
        self.upsert = upsert
        self.chunk_bytes = chunk_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.deadline = deadline  # the job's: no request or backoff past it
        self.url: str | None = None
        self.resumes = 0  # how many times a chunk was resumed from the server's offset

    def run(self) -> str:
        """Upload the whole file; raise UploadFailed naming the reason after `retries` failures in a row."""
        self.url = self._retrying("creating the upload", self._create)
        digest = hashlib.sha256()
        offset = 0
        with open(self.path, "rb") as source:
            while offset < self.size:
                offset = self._send_from(source, offset, digest)
        return digest.hexdigest()

    def _send_from(self, source, offset: int, digest) -> int:
        """Send the chunk at `offset`, resuming from the server's offset after a failure; the new offset."""
        failures = 0
        hashed_to = offset
        while True:
            source.seek(offset)
            chunk = source.read(self.chunk_bytes)
            try:
                new_offset = self._patch(offset, chunk)
            except (httpx.TransportError, TusError) as exc:
                status = getattr(exc, "status", None)
                if status is not None and status not in RETRYABLE_STATUS:
                    raise UploadFailed(f"resumable upload of {self.path.name!r}: chunk at {offset} refused: {exc}",
                                       details={"reason": str(exc), "offset": offset}) from exc
                failures += 1
                if failures > self.retries:
                    raise UploadFailed(
                        f"resumable upload of {self.path.name!r} failed at byte {offset} of {self.size} after "
                        f"{failures} attempts: {type(exc).__name__}: {exc}",
                        details={"reason": f"{type(exc).__name__}: {exc}", "offset": offset, "attempts": failures},
                    ) from exc
                wait = self.backoff_s * 2 ** (failures - 1)
                log.warning("resumable upload of %s: %s at byte %d; resuming in %.1f s", self.path.name, exc, offset, wait)
                self._sleep(wait, f"resuming the upload of {self.path.name!r} at byte {offset}")
                offset = self._retrying("asking the server's offset", self._head)
                self.resumes += 1
                if offset < hashed_to:  # the server kept less than was hashed: hash again from there
                    raise UploadFailed(f"resumable upload of {self.path.name!r}: the server went back from byte "
                                       f"{hashed_to} to {offset}", details={"offset": offset})
                continue
            # The server confirmed bytes up to new_offset; hash those not hashed yet (in order).
            if new_offset > hashed_to:
                source.seek(hashed_to)
                remaining = new_offset - hashed_to
                while remaining:
                    piece = source.read(min(remaining, 1024 * 1024))
                    digest.update(piece)
                    remaining -= len(piece)
            return new_offset

    def _create(self) -> str:
        headers = {**self.headers, "Upload-Length": str(self.size), "Upload-Metadata": _metadata(self.metadata),
                   "x-upsert": "true" if self.upsert else "false"}
        response = self.client.post(self.endpoint, headers=headers, **self._bounded("creating the upload"))
        if response.status_code != 201 or not response.headers.get("Location"):
            raise TusError(f"creating the upload: {_error_text(response)}", response.status_code)
        return self._same_origin(urljoin(self.endpoint, response.headers["Location"]))

    def _patch(self, offset: int, chunk: bytes) -> int:
        assert self.url is not None
        headers = {**self.headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        response = self.client.patch(self.url, headers=headers, content=chunk, **self._bounded(f"sending the chunk at {offset}"))
        if response.status_code not in (200, 204):
            raise TusError(f"chunk at {offset}: {_error_text(response)}", response.status_code)
        return self._offset_of(response)

    def _head(self) -> int:
        assert self.url is not None
        response = self.client.head(self.url, headers=self.headers, **self._bounded("asking the server's offset"))
        if response.status_code != 200:
            raise TusError(f"offset of the upload: HTTP {response.status_code}", response.status_code)
        return self._offset_of(response)

    def _bounded(self, doing: str) -> dict:
        """Request options: with the job's deadline, no request may wait past it."""
        if self.deadline is None:
            return {}
        if self.deadline.expired():
            raise self.deadline.exceeded(f"uploading {self.path.name!r} ({doing})")
        timeout = self.client.timeout
        bound = self.deadline.bound
        return {"timeout": httpx.Timeout(connect=bound(timeout.connect or 10.0), read=bound(timeout.read or 60.0),
                                         write=bound(timeout.write or 60.0), pool=bound(timeout.pool or 10.0))}

    def _sleep(self, seconds: float, doing: str) -> None:
        if self.deadline is not None and self.deadline.remaining() <= seconds:
            raise self.deadline.exceeded(f"uploading {self.path.name!r} ({doing})")
        time.sleep(seconds)

    def _offset_of(self, response: httpx.Response) -> int:
        try:
            offset = int(response.headers["Upload-Offset"])
        except (KeyError, ValueError):
            raise TusError(f"the answer has no valid Upload-Offset ({_error_text(response)})") from None
        if not 0 <= offset <= self.size:
            raise TusError(f"Upload-Offset {offset} is outside the file (0..{self.size})")
        return offset

    def _same_origin(self, url: str) -> str:
        """The upload URL must be on the endpoint's host: the service key goes with every request."""
        ours, theirs = urlsplit(self.endpoint), urlsplit(url)
        if theirs.netloc != ours.netloc:
            raise UploadFailed(f"Supabase Storage answered an upload URL on another host ({theirs.netloc}); "
                               f"refusing to send the service key there")
        return urlunsplit((ours.scheme, ours.netloc, theirs.path, theirs.query, ""))  # never downgraded to http

    def _retrying(self, what: str, action):
        failures = 0
        while True:
            try:
                return action()
            except (httpx.TransportError, TusError) as exc:
                status = getattr(exc, "status", None)
                failures += 1
                if (status is not None and status not in RETRYABLE_STATUS) or failures > self.retries:
                    raise UploadFailed(
                        f"resumable upload of {self.path.name!r}: {what} failed after {failures} "
                        f"attempt{'s' if failures > 1 else ''}: {exc}",
                        details={"reason": str(exc), "attempts": failures, "status": status},
                    ) from exc
                wait = self.backoff_s * 2 ** (failures - 1)
                log.warning("resumable upload of %s: %s failed (%s); retrying in %.1f s", self.path.name, what, exc, wait)
                self._sleep(wait, f"{what} for {self.path.name!r}")
