"""Run the dispatcher loop and its web app together in one event loop until SIGTERM/SIGINT.

With DATABASE_URL, before dispatching: apply the pending migrations (MIGRATE_ON_START) or
check that none this release needs is missing, then LISTEN for new and cancelled tasks
(listener.py). A post migration held back by dispatchers of an older release is tried
again at every heartbeat (when those dispatchers report that they stopped, or stop reporting).
"""

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


class StartupError(RuntimeError):
    """The dispatcher cannot start; the message says why (exit code 2)."""


class _Server(uvicorn.Server):
    # The service owns the signals: it stops the dispatcher loop and then the server.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Dispatch until SIGTERM/SIGINT (or `stop` is set); then finish the round in progress and leave."""
    held_back = await _prepare_schema(settings) if settings.database_url else False
    store = await TaskStore.connect(settings.supabase_url, settings.supabase_key)
    runpod = RunPodClient(settings.runpod_api_key, settings.runpod_api_base_url)
    dispatcher = Dispatcher(settings, store, runpod)
    listener = None
    first_connection = None
    if settings.database_url:
        listener, first_connection = await _start_listener(settings, dispatcher)
    server = _Server(uvicorn.Config(
        create_app(dispatcher, listener), host=settings.listen_host, port=settings.listen_port,
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
    log.info("dispatcher %s listening on %s:%s; routes: %s; wake-up: %s", settings.dispatcher_id,
             settings.listen_host, port, routes, settings.wakeup_description())
    helpers = []
    if listener is not None:
        helpers.append(asyncio.create_task(listener.run(stop, first_connection)))
    if held_back:
        helpers.append(asyncio.create_task(_retry_post_migrations(settings, stop)))
    try:
        await dispatcher.run(stop)
    finally:
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
        server.should_exit = True
        await web
        await runpod.aclose()
        await store.aclose()
        log.info("dispatcher %s stopped", settings.dispatcher_id)


async def _prepare_schema(settings: Settings) -> bool:
    """Migrate (MIGRATE_ON_START) or check the schema; True when post migrations wait for older dispatchers."""
    from supabase_sync.migrations.runner import MigrationError, migrate

    url = str(settings.database_url)

    def run(dry_run: bool):  # psycopg's synchronous connection, off the event loop
        return migrate(url, dry_run=dry_run, own_dispatcher_id=settings.dispatcher_id,
                       report=(lambda line: None) if dry_run else (lambda line: log.info("%s", line)))

    try:
        result = await asyncio.to_thread(run, not settings.migrate_on_start)
    except MigrationError as exc:
        raise StartupError(f"migrations: {exc}") from None
    except Exception as exc:  # psycopg: unreachable, no privilege
        if settings.migrate_on_start:
            raise StartupError(f"MIGRATE_ON_START: cannot migrate: {str(exc).strip()}") from None
        log.warning("could not check the schema's migrations (%s); starting anyway", str(exc).strip())
        return False
    if settings.migrate_on_start:
        missing = result.missing_pre
        hint = "they wait behind a post migration that dispatchers of an older release still need"
    elif not result.plan.records:
        log.warning("the database has no migration records (schema applied with psql or `supabase db push`?): "
                    "run `python -m supabase_sync migrate` once to record it; starting anyway")
        return False
    else:
        missing = [m for m in result.plan.pending if m.phase == "pre"]
        hint = "run `python -m supabase_sync migrate --pre` (or set MIGRATE_ON_START=true)"
    if missing:
        names = ", ".join(m.name for m in missing)
        raise StartupError(f"the database lacks migrations this release needs: {names}; {hint}")
    return bool(result.left_pending) and settings.migrate_on_start


async def _start_listener(settings: Settings, dispatcher: Dispatcher) -> tuple[object, object]:
    """The LISTEN connection, made now so that a connection that cannot LISTEN stops the start."""
    import psycopg

    from supabase_sync.listener import ListenUnavailable, Notice, TaskListener

    routed = set(settings.routing.task_types)

    def on_notice(notice: Notice) -> None:
        if notice.event == "cancel":
            dispatcher.wake_cancels()
        elif notice.event not in ("insert", "queued") or notice.task_type is None or notice.task_type in routed:
            dispatcher.wake()  # a task of a type this dispatcher routes is ready, or an event it does not know

    def on_connect() -> None:
        dispatcher.wake()
        dispatcher.wake_cancels()

    listener = TaskListener(str(settings.database_url), settings.dispatcher_id, on_notice, on_connect)
    try:
        return listener, await listener.connect()
    except ListenUnavailable as exc:
        raise StartupError(str(exc)) from None
    except (psycopg.Error, OSError) as exc:  # the database is down: poll meanwhile, keep trying
        log.warning("LISTEN connection failed at start (%s); polling until it connects", str(exc).strip())
        return listener, None


async def _retry_post_migrations(settings: Settings, stop: asyncio.Event) -> None:
    """Apply the post migrations held back at start as soon as no older dispatcher is alive."""
    from supabase_sync.migrations.runner import migrate

    url = str(settings.database_url)
    lines: list[str] = []
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.heartbeat_s)
            return
        except asyncio.TimeoutError:
            pass
        lines.clear()
        try:
            result = await asyncio.to_thread(migrate, url, own_dispatcher_id=settings.dispatcher_id, report=lines.append)
        except Exception as exc:
            log.error("applying the waiting post migrations failed: %s", str(exc).strip())
            continue
        if result.applied or not result.left_pending:
            for line in lines:
                log.info("%s", line)
        if not result.left_pending:
            return
