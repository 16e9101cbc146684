"""Through the real SDK's own loop, the platform receives exactly the result the handler built.

`JobResult` (a dict with a short repr) keeps runpod's debug f-strings from formatting every
byte; these tests check that nothing else changes: the JSON posted to job-done (platform mode,
against the RunPod emulator) and the JSON `/runsync` answers (`--rp_serve_api`) are the
handler's result, byte for byte what json.dumps makes of a plain dict.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from comfy.job.result import JobResult
from tests.comfy_env import ROOT, free_port, worker_env
from tests.doubles.runpod_emulator import RunPodEmulator
from tests.conftest import unique_color

pytestmark = pytest.mark.comfy
ENDPOINT = "ep-results"


class RecordingEmulator(RunPodEmulator):
    """Keeps the raw body of every job-done POST, and every progress update."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done_bodies: list[bytes] = []
        self.progress_bodies: list[dict] = []

    async def _job_done(self, request: Request) -> Response:
        body = await request.body()
        if b'"IN_PROGRESS"' in body[:200]:
            self.progress_bodies.append(json.loads(body))
        else:
            self.done_bodies.append(body)
        return await super()._job_done(request)


def two_outputs_graph() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": unique_color(), "strength": 0.5}},
        "5": {"class_type": "TestProgress", "inputs": {"image": ["2", 0], "steps": 4}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "sdk/noise"}},
        "4": {"class_type": "TestTextOutput", "inputs": {"text": "naïve \"quoted\"\nline"}},
    }


def check_result(output: dict) -> None:
    image, *texts = output["outputs"]
    data = base64.b64decode(output["images"][image["images_index"]]["data"])
    assert data.startswith(b"\x89PNG") and len(data) == image["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == image["sha256"]
    assert [t["text"] for t in texts] == ['naïve "quoted"\nline', 'NAÏVE "QUOTED"\nLINE']
    assert output["delivery"]["inline_files"] == 1 and isinstance(output["prompt_id"], str)


def test_a_job_result_encodes_exactly_as_the_plain_dict():
    plain = {"images": [{"filename": "a.png", "type": "base64", "data": "QUJD" * 1000}],
             "outputs": [{"text": "ü\n\"", "n": 1.5}], "timings": {"total_ms": 3.0}, "prompt_id": None}
    typed = JobResult(plain)

    assert json.dumps(typed, ensure_ascii=False) == json.dumps(plain, ensure_ascii=False)
    # what the SDK's f-strings print: the structure, the base64 by its length
    assert f"{typed}" == repr(typed) == ("{'images': [{'filename': 'a.png', 'type': 'base64', 'data': <4000 chars>}], "
                                        "'outputs': [{'text': 'ü\\n\"', 'n': 1.5}], 'timings': {'total_ms': 3.0}, "
                                        "'prompt_id': None}")
    from fastapi.encoders import jsonable_encoder
    assert jsonable_encoder(typed) == plain


def test_platform_mode_posts_the_handlers_result_to_job_done(worker, tmp_path):
    emulator = RecordingEmulator(job_take_wait_s=0.5).start()
    env = worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port, COMFY_URL=worker.SETTINGS.base_url,
                     **emulator.worker_env(ENDPOINT, "pod-results"))
    log = open(tmp_path / "worker.log", "wb")
    process = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        submitted = httpx.post(f"{emulator.api_base_url}/{ENDPOINT}/run", json={"input": {"workflow": two_outputs_graph()}},
                               headers={"Authorization": f"Bearer {emulator.api_key}"}, timeout=10).json()
        deadline = time.monotonic() + 120
        while not emulator.done_bodies and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert emulator.done_bodies, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        emulator.stop()

    raw = emulator.done_bodies[0]
    body = json.loads(raw)
    assert set(body) == {"output"}  # no error, no stopPod
    check_result(body["output"])
    assert raw == json.dumps(body, ensure_ascii=False).encode()  # what the SDK's json.dumps of a plain dict gives
    assert emulator.jobs[submitted["id"]].status == "COMPLETED"
    # progress went to /status on the way (through the SDK's send_result, one kept session)
    steps = [b["output"] for b in emulator.progress_bodies if b["output"]["node"] == "5"]
    assert steps and steps[-1]["value"] == steps[-1]["max"] == 4 and steps[-1]["class_type"] == "TestProgress"
    worker_log = (tmp_path / "worker.log").read_text()
    # the SDK logged the result's structure, the base64 by its length, not its bytes
    assert re.search(r"Handler output: \{'images': \[\{'filename': 'noise_\d+_\.png', 'type': 'base64', "
                     r"'data': <\d+ chars>\}\]", worker_log), worker_log[-3000:]


def test_rp_serve_api_runsync_answers_the_handlers_result(worker, tmp_path):
    port = free_port()
    env = worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port, COMFY_URL=worker.SETTINGS.base_url)
    log = open(tmp_path / "api.log", "wb")
    process = subprocess.Popen([sys.executable, "-u", "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                                "--rp_api_port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/runsync", json={"input": {"workflow": two_outputs_graph()}},
                                    timeout=120)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(30)
        log.close()

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "COMPLETED" and "error" not in body
    check_result(body["output"])
    assert not any(o.get("saved_to") for o in body["output"]["outputs"])  # the API server is not a local one-job run
