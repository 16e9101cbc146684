"""The job's `output` settings: a job-chosen S3 endpoint never gets the worker's own keys."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from comfy.errors import InvalidJobInput
from comfy.job.input import parse_job_input
from tests.conftest import empty_image_graph, png_bytes, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET
from tests.comfy.media.test_inputs import invert_graph


class ConnectionCounter:
    """A listener on loopback standing in for a host the job's author runs: counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture()
def foreign_endpoint():
    counter = ConnectionCounter()
    yield counter
    counter.sock.close()


def test_job_endpoint_without_its_own_keys_is_refused_before_anything_is_sent(
    worker, foreign_endpoint, s3_server, private_urls_allowed, monkeypatch
):
    # The worker has keys for its own bucket; a job names another endpoint and gives no
    # keys of its own: the worker's keys must not sign requests to it.
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", f"{s3_server}/worker-bucket")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", S3_SECRET)

    result = run_handler(worker, {
        "workflow": empty_image_graph("media/leak", 8, 8, unique_color()),
        "output": {"mode": "s3", "endpoint_url": foreign_endpoint.url, "bucket": "collect"},
    })

    assert result["error_type"] == "invalid_input"
    assert "endpoint_url" in result["error"] and "access_key_id" in result["error"]
    assert foreign_endpoint.connections == 0  # no signature, no key id went there


def test_job_endpoint_with_its_own_keys_is_accepted():
    job = parse_job_input({
        "workflow": empty_image_graph(),
        "output": {"mode": "s3", "endpoint_url": "https://s3.example.com", "bucket": "b",
                   "access_key_id": "AK", "secret_access_key": "SK"},
    })
    assert job.output.endpoint_url == "https://s3.example.com" and job.output.access_key_id == "AK"


@pytest.mark.parametrize("output, named", [
    ({"mode": "s3", "access_key_id": "AK"}, "go together"),
    ({"mode": "supabase", "endpoint_url": "https://s3.example.com"}, "only apply to mode 's3'"),
    ({"mode": "inline", "bucket": "b"}, "do not apply to mode 'inline'"),
    ({"mode": "ftp"}, "output.mode"),
])
def test_output_settings_that_do_not_fit_are_named(output, named):
    with pytest.raises(InvalidJobInput) as caught:
        parse_job_input({"workflow": empty_image_graph(), "output": output})
    assert named in caught.value.message


def comfy_history_size(worker) -> int:
    """How many prompts ComfyUI has run (its /history)."""
    return len(httpx.get(f"{worker.RUNTIME.client.base_url}/history", timeout=10).json())


@pytest.mark.parametrize("output, env, named", [
    ({"mode": "s3"}, {"ALLOW_PRIVATE_URLS": "true"}, "output mode 's3' has no bucket or credentials"),
    ({"mode": "supabase"}, {"ALLOW_PRIVATE_URLS": "true"}, "output mode 'supabase' is not configured"),
    ({}, {"OUTPUT_MODE": "s3", "ALLOW_PRIVATE_URLS": "true"}, "output mode 's3' has no bucket or credentials"),
    ({"mode": "s3", "endpoint_url": "http://10.0.0.1:9000/b", "access_key_id": "AK", "secret_access_key": "SK"},
     {}, "host 10.0.0.1 is a private address"),
])
def test_unusable_output_settings_fail_before_inputs_are_fetched_or_the_workflow_runs(
    worker, media_server, monkeypatch, output, env, named
):
    # The input URL would be fetched (private URLs allowed) if the output were not checked first;
    # in the last case the endpoint (10.0.0.1), not the input (127.0.0.1), is what is refused.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    image_url = media_server.add("/in.png", body=png_bytes(), content_type="image/png")
    runs_before = comfy_history_size(worker)

    result = run_handler(worker, {
        "workflow": invert_graph("media/early"),
        "inputs": [{"node": "1", "field": "image", "url": image_url}],
        "output": output,
    })

    assert "error" in result and named in result["error"], result
    assert media_server.requests == []  # the input was not fetched
    assert comfy_history_size(worker) == runs_before  # the workflow did not run
