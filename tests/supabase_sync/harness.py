"""Running the dispatcher in tests: in this process (asyncio) or as `python -m supabase_sync`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from supabase_sync.config import RoutingTable, Settings
from supabase_sync.service import serve
from tests.comfy_env import ROOT, free_port

WEBHOOK_SECRET = "test-webhook-secret"
TRIGGER_SECRET = "test-trigger-secret"
ENDPOINT = "comfy-endpoint"


def dispatcher_env(db: Any, emulator: Any, port: int, routes: str = f"comfy={ENDPOINT}", **extra: str) -> dict[str, str]:
    """The environment an operator would set, pointing at the doubles."""
    env = {
        "SUPABASE_URL": db.url,
        "SUPABASE_SERVICE_ROLE_KEY": db.service_key,
        "RUNPOD_API_KEY": emulator.api_key,
        "RUNPOD_API_BASE_URL": emulator.api_base_url,
        "DISPATCHER_ROUTES": routes,
        "POLL_INTERVAL": "0.2",
        "STATUS_CHECK_INTERVAL": "0.5",
        "CLAIM_LEASE_S": "2",
        "RETRY_BACKOFF_BASE_S": "0",
        "HEARTBEAT_INTERVAL": "1",
        "DISPATCHER_HOST": "127.0.0.1",
        "DISPATCHER_PORT": str(port),
        "DISPATCHER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TRIGGER_SECRET": TRIGGER_SECRET,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def make_settings(db: Any, emulator: Any, routing: RoutingTable | None = None, **extra: str) -> Settings:
    port = free_port()
    settings = Settings.from_env(dispatcher_env(db, emulator, port, **extra))
    if routing is not None:
        settings = settings.model_copy(update={"routing": routing})
    return settings


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[str]:
    """The dispatcher service in this event loop; yields its base URL."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    base = f"http://127.0.0.1:{settings.listen_port}"
    async with httpx.AsyncClient() as http:
        for _ in range(500):
            if task.done():
                await task
            try:
                if (await http.get(f"{base}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    try:
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def wait_for(predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def dispatch_until(settings: Settings, done: Any, what: str, worker: Any = None, timeout_s: float = 20.0) -> None:
    """Run the dispatcher service in this process until done() holds; a started scripted
    worker beside it is stopped afterwards, whatever happened."""

    async def scenario() -> None:
        async with running(settings):
            await wait_for(done, timeout_s=timeout_s, what=what)

    try:
        asyncio.run(scenario())
    finally:
        if worker is not None:
            worker.stop()


def wait_for_sync(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def release_command(release: Path | None, *args: str) -> list[str]:
    """`python -m supabase_sync ARGS`, run from another release's copy of the package when `release` is given."""
    if release is None:
        return [sys.executable, "-m", "supabase_sync", *args]
    code = (f"import runpy, sys; sys.path.insert(0, {str(release)!r}); sys.argv[0] = 'supabase_sync'; "
            "runpy.run_module('supabase_sync', run_name='__main__')")
    return [sys.executable, "-c", code, *args]


class DispatcherProcess:
    """`python -m supabase_sync` as a child process (to SIGKILL it at chosen moments).

    `release`: a folder (or zip) holding another release's supabase_sync, run instead of this one;
    `command`: the whole command line, instead of `python -m supabase_sync`;
    `cwd`: where it runs (another checkout's supabase_sync, a benchmark's baseline)."""

    def __init__(self, env: dict[str, str], log_path: Path, release: Path | None = None,
                 command: list[str] | None = None, cwd: Path = ROOT) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.command = command or release_command(release)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "DispatcherProcess":
        """Start it; with wait, until its /health answers 200."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self) -> "DispatcherProcess":
        assert self.proc is not None
        base = f"http://127.0.0.1:{self.env['DISPATCHER_PORT']}"

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"dispatcher exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for_sync(healthy, 60, what="the dispatcher's /health")  # generous: a loaded machine starts it slowly
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a crashed container."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None
