"""`timeout_s` bounds the whole job: a slow input, a silent storage endpoint and the workflow
all end near the deadline with `timeout`, and the worker is free for the next job at once."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.conftest import empty_image_graph, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET


def _assert_next_job_runs(worker) -> None:
    started = time.monotonic()
    result = run_handler(worker, {"workflow": empty_image_graph(color=unique_color())})
    assert "error" not in result, result
    assert time.monotonic() - started < 10


def test_a_one_byte_per_second_input_ends_at_the_jobs_deadline(worker, media_server, private_urls_allowed):
    url = media_server.add("/trickle.png", endless_chunk=b"x", endless_pause_s=1.0)
    job = {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
                        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "deadline/x"}}},
           "inputs": [{"node": "1", "field": "image", "url": url}], "timeout_s": 5}

    started = time.monotonic()
    result = run_handler(worker, job)
    elapsed = time.monotonic() - started

    assert result["error_type"] == "timeout", result
    assert "did not finish within 5 s (it was downloading input from host 127.0.0.1)" in result["error"]
    assert 4.5 < elapsed < 5 + 4  # DOWNLOAD_TOTAL_TIMEOUT_S is 1800 s: the job's deadline stopped it
    _assert_next_job_runs(worker)


def test_a_silent_input_server_ends_at_the_jobs_deadline(worker, media_server, private_urls_allowed):
    url = media_server.add("/silent.png", body=b"never sent", stall_after_headers_s=60)
    job = {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
                        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "deadline/y"}}},
           "inputs": [{"node": "1", "field": "image", "url": url}], "timeout_s": 3}

    started = time.monotonic()
    result = run_handler(worker, job)

    assert result["error_type"] == "timeout", result
    assert time.monotonic() - started < 3 + 4  # not DOWNLOAD_READ_TIMEOUT_S (60 s)


class SilentServer:
    """Accepts connections and never answers: a storage endpoint that hangs."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture()
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def test_an_upload_to_a_silent_endpoint_ends_at_the_jobs_deadline(worker, silent_server, private_urls_allowed):
    output = {"mode": "s3", "endpoint_url": f"http://127.0.0.1:{silent_server.port}", "bucket": "b",
              "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET}

    started = time.monotonic()
    result = run_handler(worker, {"workflow": empty_image_graph("deadline/up", color=unique_color()),
                                  "output": output, "timeout_s": 4})
    elapsed = time.monotonic() - started

    assert result["error_type"] == "timeout", result
    assert "uploading outputs to s3 bucket 'b'" in result["error"]
    assert elapsed < 4 + 4  # not botocore's 120 s read timeout, three times over
    assert silent_server.held  # it did try
    _assert_next_job_runs(worker)


def test_an_upload_to_a_silent_configured_bucket_ends_at_the_jobs_deadline(worker, silent_server, monkeypatch):
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"http://127.0.0.1:{silent_server.port}/b")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("UPLOAD_RETRIES", "5")

    started = time.monotonic()
    result = run_handler(worker, {"workflow": empty_image_graph("deadline/env", color=unique_color()), "timeout_s": 4})

    assert result["error_type"] == "timeout", result
    assert time.monotonic() - started < 4 + 6  # at most one request's read timeout (capped at timeout_s) past it
