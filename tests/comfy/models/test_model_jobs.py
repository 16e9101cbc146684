"""Jobs with `models`: fetched into the shared cache, then loaded by ComfyUI's own loader code.

Tiny safetensors files are served from a local HTTP server; the test node TestLoadLora finds
them through ComfyUI's file list and folder_paths and loads them with comfy.utils.load_torch_file.
Other worker processes are real `python handler.py` runs attached to the session's ComfyUI,
sharing its model cache: the way workers on one network volume share it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from comfy.job.run import run_job
from tests.comfy.models.tiny_models import described, load_lora_graph, loaded_text, sha256, tiny_safetensors
from tests.comfy_env import ROOT, worker_env
from tests.conftest import run_handler

pytestmark = pytest.mark.comfy


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}.safetensors"


def model_job(name: str, url: str, data: bytes, graph: dict | None = None, **extra) -> dict:
    return {"workflow": graph or load_lora_graph(name),
            "models": [{"url": url, "sha256": sha256(data), "folder": "loras", "name": name}], **extra}


def cache_root(worker) -> Path:
    return worker.SETTINGS.model_cache_root


class OtherWorker:
    """`python handler.py --test_input <job>` attached to the session's ComfyUI: another worker on the volume."""

    def __init__(self, worker, job: dict, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        full_env = worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port, COMFY_URL=worker.SETTINGS.base_url,
                              ALLOW_PRIVATE_URLS="true", RETRY_BACKOFF_S="0.05", RUNPOD_LOG_LEVEL="INFO", **env)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-u", "handler.py", "--test_input", json.dumps({"input": job})],
                                         cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.log():
            assert self.proc.poll() is None, f"worker exited ({self.proc.returncode}) before {needle!r}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {needle!r} in the worker's log:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout_s: float = 180) -> str:
        self.proc.wait(timeout_s)
        assert self.proc.returncode == 0, self.log()[-4000:]
        return self.log()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def sources_in(log: str) -> list[str]:
    return re.findall(r"'source': '(\w+)'", log)


def test_a_model_is_downloaded_once_then_served_from_the_cache(worker, media_server, private_urls_allowed):
    tensors = {"down.weight": [0.5, 1.5, 2.0], "up.weight": [-1.0, 4.25]}
    data = tiny_safetensors(tensors)
    name = unique("miss-then-hit")
    url = media_server.add(f"/models/{name}", body=data)
    updates: list[dict] = []

    first = run_job(worker.RUNTIME, model_job(name, url, data), "miss", send_progress=updates.append)
    assert "error" not in first, first
    assert loaded_text(first) == described(tensors)  # ComfyUI's loader read exactly these tensors
    assert first["models"] == [{"model": f"loras/{name}", "sha256": sha256(data), "size_bytes": len(data),
                                "source": "download", "fetch_ms": first["models"][0]["fetch_ms"]}]
    assert first["timings"]["model_fetch_ms"] > 0
    downloading = [u for u in updates if u.get("status") == f"downloading model loras/{name}"]
    assert downloading and downloading[-1]["bytes_done"] == len(data)
    assert updates.index(downloading[-1]) < next(i for i, u in enumerate(updates) if "node" in u)  # before the workflow

    second = run_handler(worker, model_job(name, url, data))
    assert "error" not in second, second
    assert loaded_text(second) == described(tensors)
    assert second["models"][0]["source"] == "cache"
    assert media_server.hits(f"/models/{name}") == 1
    assert (cache_root(worker) / "loras" / name).read_bytes() == data


def test_a_sha256_mismatch_fails_the_job_and_keeps_nothing(worker, media_server, private_urls_allowed):
    data = tiny_safetensors({"w": [1.0]})
    name = unique("mismatch")
    url = media_server.add(f"/models/{name}", body=data)
    job = model_job(name, url, data)
    job["models"][0]["sha256"] = sha256(b"something else")

    result = run_handler(worker, job)
    assert result["error_type"] == "model_sha256_mismatch"
    assert f"model loras/{name}: sha256 mismatch" in result["error"] and "nothing was kept" in result["error"]
    assert result["details"]["got"] == sha256(data) and result["details"]["expected"] == sha256(b"something else")
    assert "prompt_id" not in result  # the workflow never ran
    root = cache_root(worker)
    assert not (root / "loras" / name).exists()
    assert not (root / ".comfy-worker" / "entries" / "loras" / f"{name}.json").exists()
    assert [p for p in (root / ".comfy-worker" / "tmp").rglob("*") if p.is_file()] == []


def test_a_cut_download_resumes_where_it_stopped(worker, media_server, private_urls_allowed):
    tensors = {"w": [float(i % 7) for i in range(8000)]}  # 32 kB of weights
    data = tiny_safetensors(tensors)
    name = unique("resumed")
    url = media_server.add(f"/models/{name}", body=data, ranges=True, cut_first=1)

    result = run_handler(worker, model_job(name, url, data))
    assert "error" not in result, result
    assert loaded_text(result) == described(tensors)
    first, second = media_server.range_requests[f"/models/{name}"]
    assert first is None and second == f"bytes={len(data) // 2}-"  # the second request asked for the rest only


def test_two_workers_racing_for_one_model_download_it_once(worker, media_server, private_urls_allowed, tmp_path):
    tensors = {"w": [3.0, 1.0, 2.0]}
    data = tiny_safetensors(tensors)
    name = unique("raced")
    gate = threading.Event()
    url = media_server.add(f"/models/{name}", body=data, gate=gate)
    job = model_job(name, url, data)
    workers = [OtherWorker(worker, job, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        # one holds the lock, its download held at the server; the other waits for it
        deadline = time.monotonic() + 120
        while not any("who is downloading it" in w.log() for w in workers):
            assert time.monotonic() < deadline, [w.log()[-2000:] for w in workers]
            assert all(w.proc.poll() is None for w in workers), [w.log()[-2000:] for w in workers]
            time.sleep(0.05)
        assert not (cache_root(worker) / "loras" / name).exists()  # nothing visible while the download runs
        gate.set()
        logs = [w.finish() for w in workers]
    finally:
        gate.set()
        for w in workers:
            w.kill()
    assert media_server.hits(f"/models/{name}") == 1
    assert sorted(s for log in logs for s in sources_in(log)) == ["download", "other_worker"]
    for log in logs:
        assert described(tensors)[0] in log  # both jobs loaded the file in ComfyUI


def test_a_worker_killed_while_holding_the_download_is_taken_over(worker, media_server, private_urls_allowed, tmp_path):
    tensors = {"w": [7.0, 7.5]}
    data = tiny_safetensors(tensors)
    name = unique("orphaned")
    path = f"/models/{name}"
    url = media_server.add(path, endless_chunk=b"\0" * 4096, endless_pause_s=0.02)  # never finishes
    dying = OtherWorker(worker, model_job(name, url, data), tmp_path / "dying.log")
    scratch = cache_root(worker) / ".comfy-worker" / "tmp"

    def partial_files() -> list[Path]:
        return [p for p in scratch.rglob("*.part") if p.stat().st_size > 0] if scratch.is_dir() else []

    try:
        deadline = time.monotonic() + 120
        while not partial_files():  # its download is under way
            assert time.monotonic() < deadline and dying.proc.poll() is None, dying.log()[-3000:]
            time.sleep(0.05)
        assert not (cache_root(worker) / "loras" / name).exists()  # half a file is never under the name
        os.kill(dying.proc.pid, signal.SIGKILL)  # dies holding the lock
        dying.proc.wait(30)
    finally:
        dying.kill()
    media_server.add(path, body=data)

    started = time.monotonic()
    result = run_handler(worker, model_job(name, url, data))
    assert "error" not in result, result
    assert loaded_text(result) == described(tensors)
    assert result["models"][0]["source"] == "download"
    # taken over at once (its pid is gone), not after the 60 s a silent holder on another machine gets
    assert time.monotonic() - started < 30
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # the dead worker's partial file is gone too


def test_eviction_under_the_byte_cap_keeps_a_file_a_running_job_uses(
    worker, media_server, private_urls_allowed, tmp_path, monkeypatch,
):
    size = 20_000
    files = {}
    for label, value in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)):
        tensors = {"w": [value] * 4}
        data = tiny_safetensors(tensors, pad_to=size)
        name = unique(f"evict-{label}")
        files[label] = (name, data, tensors)
    gate = threading.Event()
    urls = {label: media_server.add(f"/models/{name}", body=data, gate=gate if label == "d" else None)
            for label, (name, data, _) in files.items()}
    cap = str(int(2.5 * size))
    monkeypatch.setenv("MODEL_CACHE_MAX_BYTES", cap)
    root = cache_root(worker)

    def job_for(*labels: str) -> dict:
        graph = {str(i): {"class_type": "TestLoadLora", "inputs": {"lora_name": files[label][0]}}
                 for i, label in enumerate(labels, start=1)}
        return {"workflow": graph, "models": [{"url": urls[label], "sha256": sha256(files[label][1]), "folder": "loras",
                                               "name": files[label][0]} for label in labels]}

    for label in ("a", "b"):
        assert "error" not in run_handler(worker, job_for(label))
    # Another worker's job uses A and is still fetching D (held at the server): A is in use.
    long_job = OtherWorker(worker, job_for("a", "d"), tmp_path / "long.log", MODEL_CACHE_MAX_BYTES=cap)
    try:
        deadline = time.monotonic() + 120
        while media_server.hits(f"/models/{files['d'][0]}") == 0:
            assert time.monotonic() < deadline and long_job.proc.poll() is None, long_job.log()[-3000:]
            time.sleep(0.05)
        assert "error" not in run_handler(worker, job_for("b"))  # B is now used more recently than A
        # C does not fit beside A and B: the least recently used file not in use goes, which is B, not A
        result = run_handler(worker, job_for("c"))
        assert "error" not in result, result
        assert (root / "loras" / files["a"][0]).exists()
        assert not (root / "loras" / files["b"][0]).exists()
        assert (root / "loras" / files["c"][0]).exists()
        gate.set()
        log = long_job.finish()
    finally:
        gate.set()
        long_job.kill()
    assert described(files["a"][2])[0] in log and described(files["d"][2])[0] in log  # A was still there to load
    total = sum(e.stat().st_size for e in (root / "loras").glob("*.safetensors"))
    assert total <= int(cap)
