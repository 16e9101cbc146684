"""`python handler.py` for a person: outputs written to a folder, a summary instead of base64, a progress bar."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import sys
import threading
from pathlib import Path

import pytest

from comfy.worker.local_run import is_local_one_job_run
from tests.comfy_env import ROOT, worker_env
from tests.conftest import png_bytes, unique_color

pytestmark = pytest.mark.comfy


def local_env(worker, out: Path, **extra: str) -> dict[str, str]:
    return worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port, COMFY_URL=worker.SETTINGS.base_url,
                      LOCAL_OUTPUT_DIR=str(out), **extra)


def test_a_local_run_writes_every_output_and_prints_a_summary_not_base64(worker, tmp_path):
    source = png_bytes(40, 30, (unique_color() % 256, 9, 9))
    job = {"id": "look-1", "input": {
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "local.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "local/inv"}},
            "4": {"class_type": "TestTextOutput", "inputs": {"text": "a caption"}},
        },
        "images": [{"name": "local.png", "image": base64.b64encode(source).decode()}],
    }}

    done = subprocess.run([sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=ROOT,
                          env=local_env(worker, tmp_path / "out"), capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "out" / "look-1"
    [image] = (folder / "local").iterdir()
    assert re.fullmatch(r"inv_\d+_\.png", image.name) and image.read_bytes().startswith(b"\x89PNG")
    texts = sorted(p.read_text() for p in folder.glob("*.txt"))
    assert texts == ["A CAPTION", "a caption"]
    summary = done.stdout
    assert "job look-1: 3 outputs" in summary
    row = next(line for line in summary.splitlines() if image.name in line)
    assert "image" in row and "inline" in row and str(folder / "local" / image.name) in row
    assert "text of node 4: 'a caption'" in summary and "timings: queue " in summary
    # the SDK logs the job's input (its base64 image too), but no output's base64 is printed
    assert base64.b64encode(image.read_bytes()).decode()[:60] not in summary + done.stderr


def test_a_failed_local_run_prints_the_error_and_exits_1(worker, tmp_path):
    job = {"input": {"workflow": {
        "1": {"class_type": "TestRaise", "inputs": {"message": "boom here"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "local/never"}},
    }}}

    done = subprocess.run([sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=ROOT,
                          env=local_env(worker, tmp_path / "out"), capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    assert "job local_test FAILED (execution_error)" in done.stdout and "boom here" in done.stdout


def test_in_a_terminal_a_progress_bar_follows_comfyuis_node_progress(worker, tmp_path):
    job = {"input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "TestProgress", "inputs": {"image": ["1", 0], "steps": 12}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "local/bar"}},
    }}}
    leader, follower = pty.openpty()  # stderr is a terminal, as when a person runs it
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    process = subprocess.Popen([sys.executable, "handler.py", "--test_input", json.dumps(job)], cwd=ROOT,
                               env=local_env(worker, tmp_path / "out", PROGRESS_INTERVAL_S="0"),
                               stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    screen = bytearray()
    reader = threading.Thread(target=_drain, args=(leader, screen), daemon=True)
    reader.start()  # read while it runs: a full terminal buffer would block the worker
    try:
        stdout, _ = process.communicate(timeout=120)
    finally:
        process.kill()
        reader.join(10)
        os.close(leader)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout)

    assert done.returncode == 0, done.stdout[-2000:]
    text = screen.decode(errors="replace")
    assert "node 2 TestProgress" in text and "12/12" in text and "[1/3 nodes]" in text
    assert "job local_test: 1 output" in done.stdout


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            return
        if not chunk:
            return
        into += chunk


def test_the_sdks_one_job_mode_is_recognised():
    assert is_local_one_job_run(["handler.py"], {})
    assert is_local_one_job_run(["handler.py", "--test_input", "{}"], {"RUNPOD_WEBHOOK_GET_JOB": "http://x"})
    assert not is_local_one_job_run(["handler.py"], {"RUNPOD_WEBHOOK_GET_JOB": "http://x"})  # the platform
    assert not is_local_one_job_run(["handler.py", "--rp_serve_api"], {})  # results go back over HTTP
    assert not is_local_one_job_run(["handler.py"], {"RUNPOD_REALTIME_PORT": "8080"})
