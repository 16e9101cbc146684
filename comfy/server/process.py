"""The ComfyUI server process: started once per container, watched, restarted, stopped.

Only the standard library is imported here so that handler.py can start ComfyUI before
it imports anything heavy: ComfyUI's own boot (10 s or more) then overlaps the worker's.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
import http.client
from pathlib import Path
from typing import Callable

from comfy.settings import WorkerSettings

log = logging.getLogger("comfy.server.process")
comfy_log = logging.getLogger("comfyui")

READY_POLL_S = 0.025  # the issue allows 50 ms; ComfyUI answers /system_stats in ~1 ms
LOG_TAIL_LINES = 60
# ComfyUI's line for a custom node whose import raised (nodes.py, load_custom_node)
_CUSTOM_NODE_IMPORT_FAILED = re.compile(r"Cannot import (.+) module for custom nodes: (.*)$")


class ComfyStartError(RuntimeError):
    """ComfyUI did not come up: it exited, or did not answer in time."""


def _set_parent_death_signal() -> None:
    """In the child, before exec: get SIGTERM if the worker dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: atexit still stops it on a normal exit


def _answers(host: str, port: int, path: str) -> bool:
    """True when GET path answers 200 (http.client: urllib would import ssl and more)."""
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class ComfyProcess:
    """Owns the `python main.py` child process of one worker.

    start() returns at once; wait_ready() blocks until /system_stats answers. Output is
    read continuously by a thread (a full pipe would stall ComfyUI) and forwarded to the
    `comfyui` logger; the last lines are kept for error messages.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        if settings.attach_mode:
            raise ValueError("ComfyProcess is not used in attach mode (COMFY_URL is set)")
        if settings.comfy_path is None:
            raise ValueError("COMFY_PATH must name the ComfyUI folder to start ComfyUI")
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._pump: threading.Thread | None = None  # reads ComfyUI's output into _tail
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.restarts = 0
        # custom node module path -> ComfyUI's error, from the log of the current process
        self.custom_node_import_errors: dict[str, str] = {}
        self.started_at: float | None = None
        self.ready_at: float | None = None
        # Children get a parent-death signal tied to the thread that spawned them, so
        # every spawn happens on one thread that lives as long as the worker.
        self._spawn_requests: queue.Queue[tuple[Callable[[], subprocess.Popen[bytes]], queue.Queue]] = queue.Queue()
        threading.Thread(target=self._spawner, name="comfy-spawner", daemon=True).start()
        atexit.register(self.stop)

    # -- life cycle ---------------------------------------------------------------------

    def command(self) -> list[str]:
        s = self.settings
        return [
            s.comfy_python, "main.py",
            "--listen", s.comfy_host, "--port", str(s.comfy_port),
            "--disable-auto-launch",
            *s.comfy_args,
        ]

    def start(self) -> None:
        """Start ComfyUI if it is not running. Returns without waiting for it."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            main_py = Path(self.settings.comfy_path) / "main.py"
            if not main_py.is_file():
                raise ComfyStartError(f"no ComfyUI at COMFY_PATH={self.settings.comfy_path} (main.py not found)")
            self._ready.clear()
            self._tail.clear()
            self.custom_node_import_errors = {}
            if self._proc is not None:
                self.restarts += 1
            self.started_at = time.monotonic()
            self.ready_at = None
            self._proc = self._spawn()
            log.info("started ComfyUI (pid %s): %s", self._proc.pid, " ".join(self.command()))
            self._pump = threading.Thread(
                target=self._pump_output, args=(self._proc,), name="comfy-log", daemon=True
            )
            self._pump.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                self.command(),
                cwd=self.settings.comfy_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )

        answer: queue.Queue = queue.Queue(maxsize=1)
        self._spawn_requests.put((popen, answer))
        result = answer.get()
        if isinstance(result, BaseException):
            raise ComfyStartError(f"could not start ComfyUI: {result}") from result
        return result

    def _spawner(self) -> None:
        while True:
            popen, answer = self._spawn_requests.get()
            try:
                answer.put(popen())
            except BaseException as exc:  # handed back to the caller
                answer.put(exc)

    def _pump_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            comfy_log.info("[comfyui] %s", line)
            if (failed := _CUSTOM_NODE_IMPORT_FAILED.search(line)) is not None:
                self.custom_node_import_errors[failed.group(1)] = failed.group(2)
        proc.stdout.close()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until ComfyUI answers /system_stats. Fails at once if it exits."""
        if self._ready.is_set() and self.is_alive():
            return
        timeout_s = self.settings.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        host, port = self.settings.comfy_host, self.settings.comfy_port
        url = f"http://{host}:{port}/system_stats"
        while True:
            proc = self._proc
            if proc is None:
                raise ComfyStartError("ComfyUI was not started")
            code = proc.poll()
            if code is not None:
                # its last lines may still be in the pipe: the pump ends when the pipe closes
                if self._pump is not None:
                    self._pump.join(timeout=2)
                raise ComfyStartError(
                    f"ComfyUI exited with code {code} during start-up. Last lines of its log:\n"
                    + self.log_tail()
                )
            if _answers(host, port, "/system_stats"):
                self.ready_at = time.monotonic()
                self._ready.set()
                log.info("ComfyUI ready in %.2f s", self.ready_at - (self.started_at or self.ready_at))
                return
            if time.monotonic() >= deadline:
                raise ComfyStartError(
                    f"ComfyUI did not answer {url} within {timeout_s:.0f} s (COMFY_START_TIMEOUT_S). "
                    "Last lines of its log:\n" + self.log_tail()
                )
            time.sleep(READY_POLL_S)

    def ensure_running(self) -> None:
        """Restart ComfyUI if it died, then wait for it. Used before each job."""
        if not self.is_alive():
            if self._proc is not None:
                log.warning("ComfyUI is not running (exit code %s): restarting it", self._proc.poll())
            self.start()
        self.wait_ready()

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def ready(self) -> bool:
        """Running and known to have answered since it was started."""
        return self._ready.is_set() and self.is_alive()

    def kill(self) -> None:
        """SIGKILL ComfyUI's process group at once: the only signal a stopped or hung one obeys."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            log.warning("killing ComfyUI (pid %s)", proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # in uninterruptible sleep (a driver call): it goes when that returns
                log.error("ComfyUI (pid %s) has not exited 10 s after SIGKILL", proc.pid)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop ComfyUI and everything it started (its process group)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            log.info("stopping ComfyUI (pid %s)", proc.pid)
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    return
                try:
                    proc.wait(timeout=wait)
                    return
                except subprocess.TimeoutExpired:
                    continue
