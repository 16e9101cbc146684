"""Fetch an input file from a URL to disk: streamed, capped, timed out, retried, vetted.

Never holds a file in memory: the body is written as it arrives to `<dest>.part` and
renamed when complete, so ComfyUI never sees half a file. Every hop (the first URL and
each redirect) goes through comfy.media.url_safety, and the connection is made to the address
that was checked (see `_open`), not to whatever DNS says a moment later.

Retried with exponential backoff: connection failures, timeouts, a connection cut
mid-body, HTTP 5xx and 429. Not retried: other 4xx, refused URLs, oversize files.
A `cancel` event (set when RunPod cancels the job) stops a download between chunks and
during a backoff wait, so a cancelled job does not hold the worker for a whole file. The
job's `deadline` bounds every wait too (connect, each read, backoff, name resolution):
when it comes before DOWNLOAD_TOTAL_TIMEOUT_S, running out of time is the job's `timeout`.
A retry after a connection cut mid-body continues where it stopped (`Range` + `If-Range`)
when the server offered byte ranges and a validator (a strong ETag or Last-Modified) for
an uncompressed body; otherwise, or if the file changed meanwhile, it starts over.

Callers that need more (the model cache) can ask for extra headers per host (an auth
token that must not follow a redirect to another host), a sha256 of the body computed as
it is written (continued across a resumed download, restarted with the file), and a
progress callback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from comfy.deadline import Deadline
from comfy.errors import JobCancelled, JobError
from comfy.media.settings import MediaSettings
from comfy.media.url_safety import CheckedURL, check_url, pinned_request_parts

log = logging.getLogger("comfy.media.downloads")

_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT_ERRORS = (httpx.TransportError,)  # connect/read/write errors and timeouts, cut connections


class DownloadFailed(JobError):
    """An input URL could not be fetched; the message names the host and the HTTP status."""

    error_type = "input_download"


class InputTooLarge(DownloadFailed):
    """An input is bigger than MAX_INPUT_BYTES."""

    error_type = "input_too_large"


class DownloadCancelled(JobCancelled):
    """The job was cancelled while an input was being fetched."""


class _Transient(Exception):
    """A failure worth another attempt; carries the error to raise if none succeeds."""

    def __init__(self, error: DownloadFailed, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after_s = retry_after_s  # the server's Retry-After, when it gave one


@dataclass
class _Partial:
    """What earlier attempts left in `path`, and whether the server lets a retry continue it."""

    path: Path
    written: int = 0
    validator: str | None = None  # strong ETag or Last-Modified of the body being continued
    resumable: bool = False
    digest: Any = None  # hashlib.sha256 of the bytes written so far, when asked for

    def restart(self) -> None:
        self.written, self.validator, self.resumable = 0, None, False
        if self.digest is not None:
            self.digest = hashlib.sha256()

    def range_headers(self) -> dict[str, str]:
        if not (self.resumable and self.written and self.validator):
            return {}
        return {"Range": f"bytes={self.written}-", "If-Range": self.validator}


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class DownloadedFile:
    """What was fetched: where it is on disk, its size, and what the server called it."""

    path: Path
    size_bytes: int
    content_type: str | None
    final_url: str
    attempts: int
    sha256: str | None = None  # hex digest of the body, when download_to_file was asked for it


HeadersForHost = Callable[[str], dict[str, str]]
ProgressCallback = Callable[[int, int | None], None]  # (bytes written, total or None)


@dataclass(frozen=True)
class _TimeLimit:
    """When a download must stop: DOWNLOAD_TOTAL_TIMEOUT_S or the job's deadline, whichever comes first."""

    at: float
    job: Deadline | None  # set when the job's deadline is the one that comes first
    total_timeout_s: float

    @classmethod
    def for_download(cls, settings: MediaSettings, deadline: Deadline | None) -> "_TimeLimit":
        own = time.monotonic() + settings.download_total_timeout_s
        if deadline is not None and deadline.at <= own:
            return cls(deadline.at, deadline, settings.download_total_timeout_s)
        return cls(own, None, settings.download_total_timeout_s)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def exceeded(self, host: str) -> JobError:
        if self.job is not None:
            return self.job.exceeded(f"downloading input from host {host}")
        return DownloadFailed(
            f"download from host {host} took longer than DOWNLOAD_TOTAL_TIMEOUT_S ({self.total_timeout_s:g} s)",
            details={"host": host},
        )


def download_to_file(
    url: str, dest: Path, settings: MediaSettings, client: httpx.Client | None = None,
    cancel: threading.Event | None = None, headers_for_host: HeadersForHost | None = None,
    sha256: bool = False, on_progress: ProgressCallback | None = None, deadline: Deadline | None = None,
) -> DownloadedFile:
    """Fetch `url` into `dest`; raise DownloadFailed (or UnsafeURL, DownloadCancelled, the
    job's JobTimeout) saying what went wrong.

    headers_for_host(host) gives extra headers for each request (each redirect hop asks
    again); sha256=True fills DownloadedFile.sha256; on_progress is called as bytes arrive.
    """
    cancel = cancel or threading.Event()
    hooks = _Hooks(headers_for_host, on_progress)
    own_client = client is None
    if client is None:
        client = new_download_client(settings)
    limit = _TimeLimit.for_download(settings, deadline)
    partial = _Partial(dest.with_name(f".{dest.name}.part"), digest=hashlib.sha256() if sha256 else None)
    try:
        attempts = settings.download_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                result = _fetch_once(client, url, dest, partial, settings, limit, cancel, hooks)
                digest = partial.digest.hexdigest() if partial.digest is not None else None
                return DownloadedFile(result[0], result[1], result[2], result[3], attempt, digest)
            except _Transient as transient:
                # A server that says when to come back (429/503 Retry-After) is waited for, unless
                # that is past the download's deadline: then there is no point waiting at all.
                wait = max(settings.retry_backoff_s * 2 ** (attempt - 1), transient.retry_after_s or 0.0)
                if limit.job is not None and limit.remaining() <= 0:
                    raise limit.exceeded(_host_of(url)) from None
                if attempt == attempts or time.monotonic() + wait >= limit.at:
                    if limit.job is not None and attempt < attempts:
                        raise limit.exceeded(_host_of(url)) from None
                    error = transient.error
                    asked = (f"; it asked to retry after {transient.retry_after_s:g} s, past DOWNLOAD_TOTAL_TIMEOUT_S"
                             if transient.retry_after_s and attempt < attempts else "")
                    error.message = f"{error.message} (gave up after {attempt} attempt{'s' if attempt > 1 else ''}{asked})"
                    error.args = (error.message,)
                    raise error from None
                log.warning("download %s: %s; retrying in %.1f s", _host_of(url), transient.error.message, wait)
                if cancel.wait(min(wait, limit.remaining())):
                    raise _cancelled(url)
        raise AssertionError("unreachable")
    finally:
        partial.path.unlink(missing_ok=True)  # gone after success (renamed) or any final failure
        if own_client:
            client.close()


@dataclass(frozen=True)
class _Hooks:
    headers_for_host: HeadersForHost | None = None
    on_progress: ProgressCallback | None = None


def new_download_client(settings: MediaSettings) -> httpx.Client:
    """An httpx client with the download timeouts; redirects are followed by hand."""
    return httpx.Client(timeout=_timeouts(settings, None), follow_redirects=False,
                        headers={"User-Agent": "comfy-serverless-worker"})


def _timeouts(settings: MediaSettings, limit: _TimeLimit | None) -> httpx.Timeout:
    """The configured connect and read timeouts, cut short where the time limit comes first."""
    left = float("inf") if limit is None else max(limit.remaining(), 0.001)
    connect, read = min(settings.download_connect_timeout_s, left), min(settings.download_read_timeout_s, left)
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


def _cancelled(url: str) -> DownloadCancelled:
    return DownloadCancelled(f"the job was cancelled while downloading from host {_host_of(url)}",
                             details={"host": _host_of(url)})


def _fetch_once(
    client: httpx.Client, url: str, dest: Path, partial: _Partial, settings: MediaSettings, limit: _TimeLimit,
    cancel: threading.Event, hooks: _Hooks,
) -> tuple[Path, int, str | None, str]:
    current = url
    for _hop in range(settings.download_max_redirects + 1):
        checked = check_url(current, allow_private=settings.allow_private_urls, deadline=limit.job)
        extra = hooks.headers_for_host(checked.host) if hooks.headers_for_host else {}
        response = _open(client, checked, {**extra, **partial.range_headers()}, settings, limit)
        try:
            status = response.status_code
            if status in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise DownloadFailed(f"host {checked.host} answered HTTP {status} without a Location header")
                current = urljoin(current, location)
                continue
            if status == 429 or status >= 500:
                raise _Transient(DownloadFailed(
                    f"download from host {checked.host} failed: HTTP {status} {response.reason_phrase}".rstrip(),
                    details={"host": checked.host, "status": status},
                ), _retry_after_s(response))
            if status >= 400:
                raise DownloadFailed(
                    f"download from host {checked.host} failed: HTTP {status} {response.reason_phrase}".rstrip(),
                    details={"host": checked.host, "status": status},
                )
            append = _continues(response, checked, partial)
            size = _stream_body(response, checked, dest, partial, append, settings, limit, cancel, hooks)
            return dest, size, response.headers.get("content-type"), current
        finally:
            response.close()
    raise DownloadFailed(
        f"download from host {_host_of(url)} failed: more than {settings.download_max_redirects} redirects",
        details={"host": _host_of(url)},
    )


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (its delta-seconds form; an HTTP date is ignored)."""
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def _continues(response: httpx.Response, checked: CheckedURL, partial: _Partial) -> bool:
    """True if `response` is the rest of the partial file; else the partial file starts over."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if partial.range_headers() and match and int(match.group(1)) == partial.written:
            return True
        partial.restart()
        raise _Transient(DownloadFailed(  # a range we did not ask for: ask again for the whole file
            f"host {checked.host} answered with an unexpected byte range "
            f"({response.headers.get('content-range')!r})", details={"host": checked.host}))
    partial.restart()  # 200: the whole file (the server ignored Range, or the file changed)
    return False


def _open(client: httpx.Client, checked: CheckedURL, extra_headers: dict[str, str] | None,
          settings: MediaSettings, limit: _TimeLimit) -> httpx.Response:
    """Send the GET to each checked address in turn until one connects.

    The connection goes to the address that was checked (`pinned_request_parts`), with
    `Host: <name>` and TLS verified for the name, not to whatever DNS says a moment later.
    """
    last: Exception | None = None
    for address in checked.addresses:
        if limit.remaining() <= 0:
            raise limit.exceeded(checked.host)
        url, headers, extensions = pinned_request_parts(checked, address)
        request = client.build_request("GET", url, headers={**headers, **(extra_headers or {})},
                                       extensions=extensions, timeout=_timeouts(settings, limit))
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError as exc:
            last = exc  # another address of the same host may answer
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(_transport_failure(checked, exc)) from None
    assert last is not None
    raise _Transient(_transport_failure(checked, last))


def _transport_failure(checked: CheckedURL, exc: Exception) -> DownloadFailed:
    if isinstance(exc, httpx.ConnectTimeout):
        what = "connection timed out"
    elif isinstance(exc, httpx.TimeoutException):
        what = "server stopped sending (read timeout)"
    elif isinstance(exc, httpx.ConnectError):
        what = f"cannot connect ({exc})"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return DownloadFailed(f"download from host {checked.host} failed: {what}", details={"host": checked.host})


def _too_large(checked: CheckedURL, size: int | str, limit: int) -> InputTooLarge:
    return InputTooLarge(
        f"input from host {checked.host} is larger than MAX_INPUT_BYTES ({limit} bytes): {size} bytes",
        details={"host": checked.host, "limit_bytes": limit},
    )


def _stream_body(
    response: httpx.Response, checked: CheckedURL, dest: Path, partial: _Partial, append: bool,
    settings: MediaSettings, time_limit: _TimeLimit, cancel: threading.Event, hooks: _Hooks,
) -> int:
    limit = settings.max_input_bytes
    if append:
        total = _CONTENT_RANGE.match(response.headers["content-range"]).group(3)  # checked by _continues
        declared = total if total != "*" else None
    else:
        declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(checked, int(declared), limit)  # refused before reading a byte
    if not append:
        # Remember how to continue this body if the connection is cut: only an uncompressed
        # body (ranges count encoded bytes) with a validator that proves it is the same file.
        etag = response.headers.get("etag")
        partial.validator = etag if etag and not etag.startswith("W/") else response.headers.get("last-modified")
        partial.resumable = (
            response.headers.get("accept-ranges", "").lower() == "bytes"
            and response.headers.get("content-encoding", "identity").lower() == "identity"
            and partial.validator is not None
        )
    written = partial.written if append else 0
    if not append and partial.digest is not None:
        partial.digest = hashlib.sha256()
    total = int(declared) if declared and declared.isdigit() else None
    with open(partial.path, "ab" if append else "wb") as out:
        try:
            # As the bytes arrive (no re-chunking buffer): what came before a cut is on disk to continue from.
            for chunk in response.iter_bytes():
                if written + len(chunk) > limit:
                    raise _too_large(checked, f"more than {limit}", limit)
                out.write(chunk)
                if partial.digest is not None:
                    partial.digest.update(chunk)
                written += len(chunk)
                partial.written = written  # what a retry can continue from
                if hooks.on_progress is not None:
                    hooks.on_progress(written, total)
                if cancel.is_set():
                    raise _cancelled(checked.url)
                if time_limit.remaining() <= 0:
                    raise time_limit.exceeded(checked.host)
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(_transport_failure(checked, exc)) from None
    os.replace(partial.path, dest)
    return written
