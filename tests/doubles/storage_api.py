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
* Resumable uploads (TUS 1.0.0, as Storage serves them at `/storage/v1/upload/resumable`, see
  ../shared/notes/supabase.md and Supabase's resumable-upload guide):
  `POST` with `Tus-Resumable: 1.0.0`, `Upload-Length` and `Upload-Metadata` (bucketName,
  objectName, contentType, cacheControl; base64 values) and `x-upsert` -> 201 with `Location:
  <url>/storage/v1/upload/resumable/<base64url(bucket/object/version)>`;
  `PATCH <Location>` with `Upload-Offset` and `Content-Type: application/offset+octet-stream`
  -> 204 with the new `Upload-Offset` (409 when the offset is not the server's, 415 for another
  content type, 413 past the length; every chunk but the last must be exactly 6 MB);
  `HEAD <Location>` -> 200 with `Upload-Offset`, `Upload-Length`, `Cache-Control: no-store`.
  The object exists once the last byte arrives. Tests can cut a PATCH's connection midway
  (`cut_patch_calls`), keeping the bytes received before the cut as tus servers do.
Every call must carry `apikey` and `Authorization: Bearer <service key>`. Errors are answered
the way the real server answers them (checked against a real Storage server): HTTP 400 for
every error but an internal one (500), with the real code in the body's `statusCode`:
`{"statusCode": "404", "error": "not_found", "message": ...}`; clients read the body's code.
The resumable (TUS) routes answer with the tus protocol's own statuses (above), as tus servers do.

Objects uploaded through Storage's S3 endpoint (moto in the tests) are found through
`external_lookup(bucket, path) -> bytes | None`, as the real service shares one store.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
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


TUS_CHUNK_BYTES = 6 * 1024 * 1024


@dataclass
class ResumableUpload:
    bucket: str
    path: str
    length: int
    content_type: str
    upsert: bool
    received: bytearray = field(default_factory=bytearray)


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
    resumable: dict[str, ResumableUpload] = field(default_factory=dict)  # by upload id
    patch_calls: int = 0
    patch_sizes: list[int] = field(default_factory=list)  # body length of every PATCH that completed
    head_calls: int = 0
    cut_patch_calls: set[int] = field(default_factory=set)  # these PATCH calls (1-based): half read, then cut
    fail_patch_calls: set[int] = field(default_factory=set)  # these PATCH calls answer 500 (nothing kept)

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

    def _error(self, code: int, error: str, message: str) -> None:
        # storage-api renders its errors with HTTP 400 unless the code is 500
        self._json(500 if code == 500 else 400, {"statusCode": str(code), "error": error, "message": message})

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
        if segments[:2] == ["upload", "resumable"] and len(segments) == 2:
            self._tus_create()
        elif segments[:2] == ["object", "sign"] and len(segments) >= 4:
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
                self._error(409, "Duplicate", "The resource already exists")
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

    # --- resumable uploads (TUS) ----------------------------------------------------
    def _tus_headers(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Tus-Resumable", "1.0.0")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _tus_refuse(self, status: int, message: str) -> None:
        self._tus_headers(status, {"Content-Type": "text/plain"}, message.encode())

    def _tus_upload(self, segments: list[str]) -> tuple[str, ResumableUpload] | None:
        if len(segments) != 3 or segments[:2] != ["upload", "resumable"]:
            self._error(404, "not_found", f"no route {self.command} {self.path}")
            return None
        upload = self.storage.resumable.get(segments[2])
        if upload is None:
            self._tus_refuse(404, "upload not found")
            return None
        return segments[2], upload

    def _tus_create(self) -> None:
        state = self.storage
        if not self._authorized():
            return
        if self.headers.get("Tus-Resumable") != "1.0.0":
            self._tus_refuse(412, "Tus-Resumable 1.0.0 required")
            return
        try:
            length = int(self.headers.get("Upload-Length", ""))
            metadata = {key: base64.b64decode(value).decode() for key, value in
                        (pair.strip().split(" ", 1) for pair in self.headers.get("Upload-Metadata", "").split(","))}
        except ValueError:
            self._tus_refuse(400, "Upload-Length and Upload-Metadata are required")
            return
        bucket, path = metadata.get("bucketName", ""), metadata.get("objectName", "")
        if bucket not in state.buckets:
            self._tus_refuse(404, "Bucket not found")
            return
        upsert = self.headers.get("x-upsert") == "true"
        if (bucket, path) in state.objects and not upsert:
            self._tus_refuse(409, "The resource already exists")
            return
        upload_id = base64.urlsafe_b64encode(f"{bucket}/{path}/{uuid.uuid4()}".encode()).decode().rstrip("=")
        with state.lock:
            state.resumable[upload_id] = ResumableUpload(bucket, path, length, metadata.get("contentType", ""), upsert)
        self._tus_headers(201, {"Location": f"http://{self.headers['Host']}/storage/v1/upload/resumable/{upload_id}"})

    def do_HEAD(self) -> None:  # noqa: N802
        segments, _query = self._route()
        if not self._authorized():
            return
        found = self._tus_upload(segments)
        if found is None:
            return
        with self.storage.lock:
            self.storage.head_calls += 1
            offset = len(found[1].received)
        self._tus_headers(200, {"Upload-Offset": str(offset), "Upload-Length": str(found[1].length),
                                "Cache-Control": "no-store"})

    def do_PATCH(self) -> None:  # noqa: N802
        segments, _query = self._route()
        state = self.storage
        length = int(self.headers.get("Content-Length") or 0)
        if not self._authorized():
            self.rfile.read(length)
            return
        found = self._tus_upload(segments)
        if found is None:
            self.rfile.read(length)
            return
        _, upload = found
        with state.lock:
            state.patch_calls += 1
            call = state.patch_calls
        if call in state.cut_patch_calls:  # a dropped connection: what arrived before it is kept
            half = self.rfile.read(length // 2)
            with state.lock:
                if int(self.headers.get("Upload-Offset", -1)) == len(upload.received):
                    upload.received += half
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = self.rfile.read(length)
        if call in state.fail_patch_calls:
            self._tus_refuse(500, "injected failure")
            return
        if self.headers.get("Content-Type") != "application/offset+octet-stream":
            self._tus_refuse(415, "Content-Type must be application/offset+octet-stream")
            return
        with state.lock:
            offset = len(upload.received)
            if int(self.headers.get("Upload-Offset", -1)) != offset:
                self._tus_refuse(409, f"offset mismatch: the upload is at {offset}")
                return
            if offset + len(body) > upload.length:
                self._tus_refuse(413, "more bytes than Upload-Length")
                return
            if len(body) != TUS_CHUNK_BYTES and offset + len(body) != upload.length:
                self._tus_refuse(400, f"chunks must be {TUS_CHUNK_BYTES} bytes except the last")
                return
            upload.received += body
            state.patch_sizes.append(len(body))
            new_offset = len(upload.received)
            if new_offset == upload.length:
                state.objects[(upload.bucket, upload.path)] = StoredObject(bytes(upload.received), upload.content_type)
        self._tus_headers(204, {"Upload-Offset": str(new_offset)})
