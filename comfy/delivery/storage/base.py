"""What every uploader returns and shares: the result model, retries, hashing."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Callable, Protocol, TypeVar

from pydantic import BaseModel, Field

from comfy.deadline import Deadline
from comfy.errors import JobError

log = logging.getLogger("comfy.delivery.storage")

HASH_CHUNK_BYTES = 1024 * 1024
T = TypeVar("T")


class StoredFile(BaseModel):
    """One uploaded file, as the job result reports it."""

    url: str = Field(description="where to download it: presigned, signed or public")
    storage_path: str = Field(description="object key inside the bucket")
    bucket: str
    size_bytes: int
    sha256: str = Field(description="hex digest of the bytes uploaded")
    content_type: str


class UploadFailed(JobError):
    """An output could not be stored; the message names the file and the destination."""

    error_type = "upload_failed"


class Uploader(Protocol):
    """Stores files under keys of one bucket."""

    destination: str  # for messages: "s3 bucket X at host Y"

    def upload(self, path: Path, key: str, content_type: str) -> StoredFile:
        """Store the file at `path` under `key`; raise UploadFailed naming file and destination."""

    def delete(self, key: str) -> None:
        """Remove `key` (best effort; used to take back a job's uploads when a later one fails)."""


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (hashlib releases the GIL for each)."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def with_retries(action: Callable[[], T], describe: str, retries: int, backoff_s: float,
                 is_retryable: Callable[[Exception], bool] = lambda exc: True, deadline: Deadline | None = None) -> T:
    """Run `action`, retrying with exponential backoff; raise UploadFailed after the last try.

    With the job's `deadline`: no attempt starts, and no backoff waits, past it (the job's
    JobTimeout is raised instead).
    """
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        if deadline is not None and deadline.expired():
            raise deadline.exceeded(describe)
        try:
            return action()
        except JobError:  # UploadFailed, or the job's own timeout: final
            raise
        except Exception as exc:  # noqa: BLE001 - every client library raises its own types
            reason = f"{type(exc).__name__}: {exc}"
            if attempt == attempts or not is_retryable(exc):
                raise UploadFailed(
                    f"{describe} failed after {attempt} attempt{'s' if attempt > 1 else ''}: {reason}",
                    details={"reason": reason, "attempts": attempt},
                ) from exc
            wait = backoff_s * 2 ** (attempt - 1)
            if deadline is not None and deadline.remaining() <= wait:
                raise deadline.exceeded(f"{describe} (last attempt: {reason})") from exc
            log.warning("%s: %s; retrying in %.1f s", describe, reason, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")
