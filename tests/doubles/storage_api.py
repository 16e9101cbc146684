"""A small stand-in for Supabase Storage's HTTP API: only what the worker uses.

Follows ../shared/notes/supabase.md and storage3 2.34's requests:
* `POST /storage/v1/object/<bucket>/<path>`: multipart upload, field `file`, header
  `x-upsert`; answers `{"Key": "<bucket>/<path>", "Id": ...}`; 409-style error body
  when the object exists and upsert is not "true".
* `POST /storage/v1/object/sign/<bucket>/<path>` `{"expiresIn": ...}` ->
  `{"signedURL": "/object/sign/<bucket>/<path>?token=..."}`; 404 body when no such object.
* `GET /storage/v1/object/sign/<bucket>/<path>?token=...` and
  `GET /storage/v1/object/public/<bucket>/<path>`: the bytes.
* `DELETE /storage/v1/object/<bucket>` `{"prefixes": [...]}`.
Every call must carry `apikey` and `Authorization: Bearer <service key>`. Errors use
Storage's body `{"statusCode": "...", "error": "...", "message": "..."}`.

Objects uploaded through Storage's S3 endpoint (moto in the tests) are found through
`external_lookup(bucket, path) -> bytes | None`, as the real service shares one store.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class StoredObject:
    data: bytes
    content_type: str


@dataclass
class StorageState:
    service_key: str
    public_buckets: set[str] = field(default_factory=set)
    buckets: set[str] = field(default_factory=set)
    objects: dict[tuple[str, str], StoredObject] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    fail_upload_calls: set[int] = field(default_factory=set)  # these upload calls (1-based) answer 500
    upload_calls: int = 0
    sign_calls: int = 0
    external_lookup: Callable[[str, str], bytes | None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, bucket: str, path: str) -> bytes | None:
        found = self.objects.get((bucket, path))
        if found is not None:
            return found.data
        return self.external_lookup(bucket, path) if self.external_lookup else None


class StorageApiDouble:
    """Run the double on 127.0.0.1:<free port>; `.url` is what SUPABASE_URL would be."""

    def __init__(self, service_key: str, buckets: set[str], public_buckets: set[str] = frozenset()) -> None:
        self.state = StorageState(service_key=service_key, buckets=set(buckets), public_buckets=set(public_buckets))
        state = self.state

        class Handler(_StorageHandler):
            storage = state

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StorageApiDouble":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _StorageHandler(BaseHTTPRequestHandler):
    storage: StorageState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet test output
        pass

    # --- helpers ---------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode())

    def _error(self, http_status: int, error: str, message: str) -> None:
        self._json(http_status, {"statusCode": str(http_status), "error": error, "message": message})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        key = self.storage.service_key
        if self.headers.get("apikey") != key or self.headers.get("Authorization") != f"Bearer {key}":
            self._error(403, "Unauthorized", "invalid signature")
            return False
        return True

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        prefix = "/storage/v1/"
        if not parts.path.startswith(prefix):
            return [], {}
        return [unquote(p) for p in parts.path[len(prefix):].split("/")], parse_qs(parts.query)

    # --- routes ----------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        segments, _query = self._route()
        body = self._body()
        if not self._authorized():
            return
        if segments[:2] == ["object", "sign"] and len(segments) >= 4:
            self._sign(segments[2], "/".join(segments[3:]), body)
        elif segments[:1] == ["object"] and len(segments) >= 3:
            self._upload(segments[1], "/".join(segments[2:]), body)
        else:
            self._error(404, "not_found", f"no route POST {self.path}")

    def _upload(self, bucket: str, path: str, body: bytes) -> None:
        state = self.storage
        with state.lock:
            state.upload_calls += 1
            if state.upload_calls in state.fail_upload_calls:
                self._error(500, "internal", "injected failure")
                return
        if bucket not in state.buckets:
            self._error(404, "Bucket not found", "Bucket not found")
            return
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode() + body
        )
        file_part = next((p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "file"), None)
        if file_part is None:
            self._error(400, "invalid_request", "multipart field 'file' missing")
            return
        upsert = self.headers.get("x-upsert") == "true"
        with state.lock:
            if (bucket, path) in state.objects and not upsert:
                self._error(400, "Duplicate", "The resource already exists")
                return
            state.objects[(bucket, path)] = StoredObject(file_part.get_payload(decode=True), file_part.get_content_type())
        self._json(200, {"Key": f"{bucket}/{path}", "Id": secrets.token_hex(8)})

    def _sign(self, bucket: str, path: str, body: bytes) -> None:
        state = self.storage
        with state.lock:
            state.sign_calls += 1
        try:
            expires_in = int(json.loads(body or b"{}")["expiresIn"])
        except (KeyError, ValueError):
            self._error(400, "invalid_request", "expiresIn is required")
            return
        if expires_in <= 0 or state.find(bucket, path) is None:
            self._error(404, "not_found", "Object not found")
            return
        token = secrets.token_urlsafe(16)
        state.tokens[token] = (bucket, path)
        self._json(200, {"signedURL": f"/object/sign/{bucket}/{path}?token={token}"})

    def do_GET(self) -> None:  # noqa: N802
        segments, query = self._route()
        state = self.storage
        if segments[:2] == ["object", "sign"] and len(segments) >= 4:
            bucket, path = segments[2], "/".join(segments[3:])
            if state.tokens.get((query.get("token") or [""])[0]) != (bucket, path):
                self._error(400, "InvalidJWT", "invalid token")
                return
        elif segments[:2] == ["object", "public"] and len(segments) >= 4:
            bucket, path = segments[2], "/".join(segments[3:])
            if bucket not in state.public_buckets:
                self._error(400, "not_found", "Bucket is not public")
                return
        else:
            self._error(404, "not_found", f"no route GET {self.path}")
            return
        data = state.find(bucket, path)
        if data is None:
            self._error(404, "not_found", "Object not found")
            return
        stored = state.objects.get((bucket, path))
        self._send(200, data, stored.content_type if stored else "application/octet-stream")

    def do_DELETE(self) -> None:  # noqa: N802
        segments, _query = self._route()
        body = self._body()
        if not self._authorized():
            return
        if segments[:1] != ["object"] or len(segments) != 2:
            self._error(404, "not_found", f"no route DELETE {self.path}")
            return
        removed = []
        with self.storage.lock:
            for path in json.loads(body or b"{}").get("prefixes", []):
                if self.storage.objects.pop((segments[1], path), None) is not None:
                    removed.append({"name": path, "bucket_id": segments[1]})
        self._json(200, removed)
