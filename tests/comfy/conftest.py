"""Fixtures for media tests: a local file server, a loopback S3 server (moto), the Storage double.

The file server answers per path from a table each test fills in (`media_server.add`):
a body, a redirect, a status, a slow or an endless body; it records every request's
path and headers.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.comfy_env import free_port
from tests.conftest import file_bytes, run_handler, unique_color
from tests.doubles.storage_api import StorageApiDouble

S3_KEY_ID = "test-key-id"
S3_SECRET = "test-secret"
SERVICE_KEY = "service-role-key-for-tests"


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    location: str | None = None
    delay_s: float = 0.0  # before the headers
    slow_first: int = 0  # only this many requests first wait delay_s (0: every request)
    gate: threading.Event | None = None  # hold each request (before the headers) until the test sets it
    stall_after_headers_s: float = 0.0  # headers, then silence
    declared_length: int | None = None  # Content-Length to claim (default: len(body))
    endless_chunk: bytes | None = None  # stream this chunk forever (no Content-Length)
    endless_pause_s: float = 0.0  # between endless chunks: a slow, never-ending download
    fail_first: int = 0  # answer `fail_status` this many times first
    fail_status: int = 503
    fail_headers: dict[str, str] = field(default_factory=dict)  # sent with those failures (Retry-After, ...)
    cut_first: int = 0  # this many times first: full Content-Length, half the body, connection closed
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (Content-Encoding, ...)
    ranges: bool = False  # Accept-Ranges: bytes, an ETag, and 206 answers to `Range: bytes=N-`
    etag: str = '"v1"'
    replace_after_cut: tuple[bytes, str] | None = None  # (body, etag) the file becomes after a cut


@dataclass
class MediaServer:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    arrivals: dict[str, list[float]] = field(default_factory=dict)  # path -> time.monotonic() of each request
    range_requests: dict[str, list[str | None]] = field(default_factory=dict)  # path -> Range header of each request
    headers_seen: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # path -> headers of each request

    def add(self, path: str, **kwargs: Any) -> str:
        self.routes[path] = Route(**kwargs)
        return self.url + path

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


def _make_handler(server: MediaServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            server.requests.append((path, self.headers.get("Host", "")))
            server.arrivals.setdefault(path, []).append(time.monotonic())
            server.range_requests.setdefault(path, []).append(self.headers.get("Range"))
            server.headers_seen.setdefault(path, []).append(dict(self.headers.items()))
            route = server.routes.get(path)
            if route is None:
                route = Route(status=404, body=b"not found")
            if route.fail_first > 0:
                route.fail_first -= 1
                self._answer(route.fail_status, b"busy", "text/plain", route.fail_headers)
                return
            if route.slow_first <= 0 or len(server.arrivals[path]) <= route.slow_first:
                time.sleep(route.delay_s)
            if route.gate is not None:
                route.gate.wait(120)
            if route.location:
                self.send_response(route.status)
                self.send_header("Location", route.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if route.endless_chunk is not None:
                self.send_response(200)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while True:
                        chunk = route.endless_chunk
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        time.sleep(route.endless_pause_s)
                except (BrokenPipeError, ConnectionResetError):
                    return
            body, status = route.body, route.status
            wanted = self.headers.get("Range", "")
            if_range = self.headers.get("If-Range")
            partial_from = None
            if route.ranges and wanted.startswith("bytes=") and wanted.endswith("-") and if_range in (None, route.etag):
                partial_from = int(wanted[len("bytes="):-1])
                body, status = route.body[partial_from:], 206
            self.send_response(status)
            self.send_header("Content-Type", route.content_type)
            length = route.declared_length if route.declared_length is not None else len(body)
            self.send_header("Content-Length", str(length))
            if route.ranges:
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", route.etag)
            if partial_from is not None:
                self.send_header("Content-Range", f"bytes {partial_from}-{len(route.body) - 1}/{len(route.body)}")
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if route.cut_first > 0:
                route.cut_first -= 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                if route.replace_after_cut:
                    route.body, route.etag = route.replace_after_cut
                return
            if route.stall_after_headers_s:
                time.sleep(route.stall_after_headers_s)
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serving_media() -> Iterator[MediaServer]:
    """A file server on 127.0.0.1 while the block runs."""
    holder = MediaServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(holder))
    httpd.daemon_threads = True
    holder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def media_server() -> Iterator[MediaServer]:
    """A file server on 127.0.0.1 for this test."""
    with serving_media() as server:
        yield server


@pytest.fixture()
def private_urls_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local file server is on loopback: jobs that download from it need ALLOW_PRIVATE_URLS."""
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("RETRY_BACKOFF_S", "0.05")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on loopback; yields its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY_ID,
                        aws_secret_access_key=S3_SECRET, region_name="us-east-1")


@pytest.fixture()
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket for this test."""
    name = f"out-{time.monotonic_ns() % 10**12}"
    client = s3_client(s3_server)
    client.create_bucket(Bucket=name)
    yield name
    for obj in client.list_objects_v2(Bucket=name).get("Contents", []):
        client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture()
def storage_api(s3_server: str) -> Iterator[StorageApiDouble]:
    """The Storage API double with buckets `outputs` (private) and `public-outputs`; objects
    uploaded through the S3 route (moto) are visible to it too."""
    client = s3_client(s3_server)
    for bucket in ("outputs", "public-outputs"):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def lookup(bucket: str, path: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=path)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        except Exception:  # noqa: BLE001 - no such bucket in moto: not there
            return None

    with StorageApiDouble(SERVICE_KEY, {"outputs", "public-outputs"}, {"public-outputs"}) as double:
        double.state.external_lookup = lookup
        yield double


@pytest.fixture(scope="session")
def mp4_bytes(worker) -> bytes:
    """A real 3-frame 64x64 mp4, made by ComfyUI itself (CreateVideo -> SaveVideo)."""
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": unique_color()}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "media/src", "format": "mp4", "codec": "h264"}},
    }
    result = run_handler(worker, {"workflow": workflow})
    assert "error" not in result, result
    return file_bytes(result, result["outputs"][0])


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.content


@pytest.fixture(autouse=True)
def clean_media_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the shell running pytest has set."""
    from comfy.media.settings import ENV_VARS
    from comfy.models.settings import ENV_VARS as MODEL_ENV_VARS

    for variable in (*ENV_VARS.values(), *MODEL_ENV_VARS.values()):
        monkeypatch.delenv(variable, raising=False)
