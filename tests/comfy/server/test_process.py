"""The ComfyUI process: start-up failures are fast and clear; nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfy.server.process import ComfyProcess, ComfyStartError
from comfy.server.runtime import WorkerRuntime
from comfy.settings import SettingsError, WorkerSettings
from tests.comfy_env import ROOT, comfy_cache, free_port, worker_env


# A stand-in main.py that answers every GET with 200 `{}` (as ComfyUI's /system_stats and /queue do).
SERVING_MAIN_PY = (
    "import sys, http.server\n"
    "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n"
)


def test_a_comfyui_that_exits_during_start_up_fails_at_once_with_its_log(tmp_path):
    (tmp_path / "main.py").write_text("import sys\nprint('loading nodes')\nsys.exit('CUDA driver missing')\n")
    settings = WorkerSettings(comfy_path=tmp_path, comfy_port=free_port(), comfy_python=sys.executable, start_timeout_s=60)
    process = ComfyProcess(settings)
    process.start()
    started = time.monotonic()
    with pytest.raises(ComfyStartError) as caught:
        process.wait_ready()
    assert time.monotonic() - started < 5
    assert "exited with code 1 during start-up" in str(caught.value)
    assert "CUDA driver missing" in str(caught.value) and "loading nodes" in str(caught.value)


def test_a_missing_comfyui_folder_is_named(tmp_path):
    process = ComfyProcess(WorkerSettings(comfy_path=tmp_path / "nowhere"))
    with pytest.raises(ComfyStartError, match="no ComfyUI at COMFY_PATH=.*nowhere"):
        process.start()


def test_a_chatty_comfyui_never_stalls_on_a_full_pipe(tmp_path):
    # 4 MB of log before it starts serving: far more than a pipe buffer holds.
    (tmp_path / "main.py").write_text("for i in range(40000): print('x' * 100)\n" + SERVING_MAIN_PY)
    settings = WorkerSettings(comfy_path=tmp_path, comfy_port=free_port(), comfy_python=sys.executable)
    process = ComfyProcess(settings)
    process.start()
    try:
        process.wait_ready(timeout_s=30)
        assert process.is_alive()
    finally:
        process.stop()
    assert not process.is_alive()


def test_a_comfyui_frozen_between_jobs_is_killed_and_restarted_before_the_next_job(tmp_path):
    # A stand-in main.py that answers like ComfyUI's /system_stats and /queue: this is about
    # the process, and a real ComfyUI's 10 s boot would only slow it down (a real one frozen
    # mid-job: tests/comfy/job/test_hung_comfyui.py).
    (tmp_path / "main.py").write_text(SERVING_MAIN_PY)
    settings = WorkerSettings(comfy_path=tmp_path, comfy_port=free_port(), comfy_python=sys.executable)
    process = ComfyProcess(settings)
    process.start()
    runtime = WorkerRuntime(settings, process)
    try:
        assert runtime.ensure_ready() > 0  # the first boot: time the job's deadline leaves out
        frozen_pid = process.pid
        assert runtime.ensure_ready() == 0  # answering: nothing to wait for
        os.kill(frozen_pid, signal.SIGSTOP)
        started = time.monotonic()

        booted_s = runtime.ensure_ready()

        assert process.pid != frozen_pid and process.is_alive() and process.restarts == 1
        assert 4.5 < booted_s < 30  # the 5 s probe and the new boot, all outside the job's deadline
        assert time.monotonic() - started < 30
        with pytest.raises(ProcessLookupError):
            os.kill(frozen_pid, 0)  # killed (SIGKILL works on a stopped process) and reaped
    finally:
        runtime.shutdown()


def test_bad_settings_name_the_variable():
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env({"COMFY_PORT": "eighty", "COMFY_FREE_AFTER_JOB": "all", "REFRESH_WORKER": "maybe"})
    message = str(caught.value)
    assert "COMFY_PORT" in message and "COMFY_FREE_AFTER_JOB" in message and "REFRESH_WORKER" in message


def test_python_handler_py_runs_test_input_json_and_exits_0(worker, tmp_path):
    # Attach to the session's ComfyUI: the point here is RunPod's local mode end to end.
    env = worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port,
                     COMFY_URL=worker.SETTINGS.base_url, RUNPOD_LOG_LEVEL="INFO", LOCAL_OUTPUT_DIR=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, str(ROOT / "handler.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Job local_test completed successfully" in done.stdout + done.stderr
    # Both files were written to LOCAL_OUTPUT_DIR/<job id>/ and removed from ComfyUI's output/.
    written = sorted(p.name for p in (tmp_path / "out" / "local_test" / "test_input").iterdir())
    assert re.fullmatch(r"inverted_\d+_\.png", written[0]) and re.fullmatch(r"video_\d+_\.mp4", written[1])
    output_dir = Path(worker.SETTINGS.comfy_path) / "output" / "test_input"
    assert not output_dir.exists()  # the folder its filename_prefix made went too


def test_python_handler_py_exits_1_on_a_failing_job(worker):
    env = worker_env(worker.SETTINGS.comfy_path, worker.SETTINGS.comfy_port, COMFY_URL=worker.SETTINGS.base_url)
    job = {"input": {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}}
    done = subprocess.run([sys.executable, str(ROOT / "handler.py"), "--test_input", json.dumps(job)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "unknown node class 'NoSuchNode'" in done.stdout + done.stderr


def test_the_worker_starts_its_own_comfyui_and_leaves_no_orphan(tmp_path):
    from tests.comfy_env import make_comfy_copy

    comfy_path = make_comfy_copy(tmp_path / "ComfyUI")
    port = free_port()
    env = worker_env(comfy_path, port)
    done = subprocess.run([sys.executable, str(ROOT / "handler.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ComfyUI ready in" in done.stderr
    assert "[comfyui]" in done.stderr  # its log is forwarded with a prefix
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
