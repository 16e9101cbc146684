"""The ComfyUI worker's row in `workers`: id comfy-worker-<pod id>, status, current_task_id.

Used by handler.py so that the seed's monitoring query shows live workers:

    heartbeat = WorkerHeartbeat.from_env()
    heartbeat.start()
    heartbeat.set_current_task(task_id)   # at the start of a job (None when it ends)
    heartbeat.stop()

Does nothing without SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY. Every database call
happens on a background thread: set_current_task() only records the value and wakes that
thread, so a slow or unreachable Supabase never delays or fails a job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Mapping

from comfy.worker.supabase_rpc import CALL_TIMEOUT_S, SupabaseRpc

log = logging.getLogger("comfy.worker.heartbeat")

DEFAULT_INTERVAL_S = 15.0


class WorkerHeartbeat:
    """Keeps one `workers` row alive through the `heartbeat` SQL function (an RPC)."""

    def __init__(self, worker_id: str, supabase_url: str | None, service_role_key: str | None,
                 interval_s: float = DEFAULT_INTERVAL_S, metadata: dict[str, Any] | None = None) -> None:
        self.worker_id = worker_id
        self._rpc = SupabaseRpc(supabase_url, service_role_key)
        self.enabled = self._rpc.enabled
        self.interval_s = interval_s
        self.metadata = metadata or {"kind": "comfy-worker"}
        self.beats = 0  # successful calls, for tests and logs
        self.failures = 0
        self._lock = threading.Lock()
        self._current: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerHeartbeat":
        """comfy-worker-<RUNPOD_POD_ID or host name>; HEARTBEAT_INTERVAL seconds (default 15)."""
        env = os.environ if env is None else env
        pod = env.get("RUNPOD_POD_ID") or socket.gethostname()
        try:
            interval = float(env.get("HEARTBEAT_INTERVAL") or DEFAULT_INTERVAL_S)
        except ValueError:
            log.warning("HEARTBEAT_INTERVAL=%r is not a number; using %s s", env.get("HEARTBEAT_INTERVAL"), DEFAULT_INTERVAL_S)
            interval = DEFAULT_INTERVAL_S
        metadata = {"kind": "comfy-worker", "endpoint_id": env.get("RUNPOD_ENDPOINT_ID")}
        return cls(f"comfy-worker-{pod}", env.get("SUPABASE_URL"), env.get("SUPABASE_SERVICE_ROLE_KEY"),
                   max(0.1, interval), metadata)

    def start(self) -> "WorkerHeartbeat":
        if not self.enabled or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()
        return self

    def set_current_task(self, task_id: Any) -> None:
        """Record the task being worked on (None: idle). Never blocks on the network."""
        with self._lock:
            self._current = _as_uuid(task_id)
        self._wake.set()

    def stop(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Say 'stopped' (best effort, bounded by timeout_s) and end the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s + 1)
        self._thread = None

    # --- background thread ----------------------------------------------------------------

    def _beat(self, status: str) -> None:
        with self._lock:
            task_id = self._current
        if status == "active":
            status = "busy" if task_id else "idle"
        try:
            self._rpc.call("heartbeat", {"p_worker_id": self.worker_id, "p_status": status,
                                         "p_current_task_id": task_id, "p_metadata": self.metadata})
            self.beats += 1
        except Exception as exc:  # never let monitoring hurt the work
            self.failures += 1
            if self.failures == 1 or self.failures % 20 == 0:
                log.warning("heartbeat for %s failed (%d so far): %s", self.worker_id, self.failures, exc)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            self._beat("active")
            self._wake.wait(self.interval_s)
        with self._lock:
            self._current = None
        self._beat("stopped")


def _as_uuid(task_id: Any) -> str | None:
    if task_id in (None, ""):
        return None
    try:
        return str(uuid.UUID(str(task_id)))
    except ValueError:
        # current_task_id is a uuid column: a job without a Supabase task is shown as busy
        # through its status only
        log.debug("task id %r is not a UUID; not recorded", task_id)
        return None
