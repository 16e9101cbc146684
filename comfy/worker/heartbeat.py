"""The ComfyUI worker's row in `workers`: id comfy-worker-<pod id>, status, the current tasks.

Used by handler.py so that the seed's monitoring query shows live workers:

    heartbeat = WorkerHeartbeat.from_env()
    heartbeat.start()
    heartbeat.task_started(task_id)    # at the start of a job
    heartbeat.task_finished(task_id)   # when it ends
    heartbeat.stop()

A worker that pipelines jobs (JOB_CONCURRENCY 2-3) holds several at once: the row lists every
one in `current_task_ids`, in the order they started, and `current_task_id` is the first
(0100_worker_current_tasks.sql). Against a database without that migration only
`current_task_id` is sent.

Does nothing without SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY. Every database call
happens on a background thread: task_started() and task_finished() only record the change and wake that
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
        self._current: list[str] = []  # task ids (UUIDs) of the jobs held now, in the order they started
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._with_ids = True  # until the database says its heartbeat() takes no p_current_task_ids

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

    def task_started(self, task_id: Any) -> None:
        """One more task is being worked on (a job without a task id, or not a UUID, is not shown)."""
        task = _as_uuid(task_id)
        if task is None:
            return
        with self._lock:
            self._current.append(task)
        self._wake.set()

    def task_finished(self, task_id: Any) -> None:
        """A task's job ended: it leaves the row (once, should two jobs carry one task)."""
        task = _as_uuid(task_id)
        with self._lock:
            if task not in self._current:
                return
            self._current.remove(task)
        self._wake.set()

    @property
    def current_tasks(self) -> list[str]:
        with self._lock:
            return list(self._current)

    def stop(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        """Say 'stopped' (best effort, bounded by timeout_s) and end the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s + 1)
        self._thread = None

    # --- background thread ----------------------------------------------------------------

    def _send(self, status: str, task_ids: list[str]) -> None:
        from postgrest.exceptions import APIError

        args = {"p_worker_id": self.worker_id, "p_status": status,
                "p_current_task_id": task_ids[0] if task_ids else None, "p_metadata": self.metadata}
        if not self._with_ids:
            self._rpc.call("heartbeat", args)
            return
        try:
            self._rpc.call("heartbeat", {**args, "p_current_task_ids": task_ids})
        except APIError as exc:
            if exc.code != "PGRST202":  # PostgREST: no function with these arguments
                raise
            log.warning("the database's heartbeat() takes no p_current_task_ids (0100_worker_current_tasks.sql "
                        "not applied): the workers row shows the first current task only")
            self._with_ids = False
            self._rpc.call("heartbeat", args)

    def _beat(self, status: str) -> None:
        with self._lock:
            task_ids = list(self._current)
        if status == "active":
            status = "busy" if task_ids else "idle"
        try:
            self._send(status, task_ids)
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
            self._current = []
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
