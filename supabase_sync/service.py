"""Run the dispatcher loop and its web app together in one event loop until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Iterator

import uvicorn

from supabase_sync.config import Settings
from supabase_sync.dispatcher import Dispatcher
from supabase_sync.runpod_api import RunPodClient
from supabase_sync.store import TaskStore
from supabase_sync.webapp import create_app

log = logging.getLogger("supabase_sync")


class _Server(uvicorn.Server):
    # The service owns the signals: it stops the dispatcher loop and then the server.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Dispatch until SIGTERM/SIGINT (or `stop` is set); then finish the round in progress and leave."""
    store = await TaskStore.connect(settings.supabase_url, settings.supabase_key)
    runpod = RunPodClient(settings.runpod_api_key, settings.runpod_api_base_url)
    dispatcher = Dispatcher(settings, store, runpod)
    server = _Server(uvicorn.Config(
        create_app(dispatcher), host=settings.listen_host, port=settings.listen_port,
        log_level="warning", access_log=False, lifespan="off",
    ))
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    web = asyncio.create_task(server.serve())
    while not server.started:
        if web.done():
            await web  # raises the bind error
            raise SystemExit(f"the web app could not listen on {settings.listen_host}:{settings.listen_port}")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    routes = ", ".join(f"{'/'.join(r.task_types)} -> {r.endpoint_id}" for r in settings.routing.routes)
    log.info("dispatcher %s listening on %s:%s; routes: %s; poll every %ss", settings.dispatcher_id,
             settings.listen_host, port, routes, settings.poll_interval_s)
    try:
        await dispatcher.run(stop)
    finally:
        server.should_exit = True
        await web
        await runpod.aclose()
        await store.aclose()
        log.info("dispatcher %s stopped", settings.dispatcher_id)
