"""The LISTEN wake-up: a direct database connection that hears the tasks table's NOTIFYs.

The triggers of 0060_notify_listeners.sql and 0061_notify_released.sql NOTIFY channel
`supabase_sync` inside the transaction that inserts a queued task, releases a waiting one
(pipelines) or cancels one. PostgreSQL delivers a notification
when, and only if, that transaction commits, to every session listening then: nothing
is sent for a rolled-back insert, and no public URL or secret is involved.

A notification only wakes the dispatcher early. What it may miss (while this connection
is down, or a dispatcher is restarting) the poll every POLL_INTERVAL still finds, and
each (re)connection starts a round at once to catch up.

After LISTEN the connection sends itself a probe notification. A connection that cannot
LISTEN (a transaction-mode pooler delivers notifications to whichever client holds the
server connection at the time, usually not this one) never hears it: on the first
connection that is an error naming the cause; later it is retried like a dropped
connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from supabase_sync.database import connect_async, describe

log = logging.getLogger("supabase_sync.listener")

CHANNEL = "supabase_sync"  # the channel of 0060_notify_listeners.sql's triggers


class ListenUnavailable(RuntimeError):
    """The connection cannot LISTEN; the message says why and what to use."""


@dataclass(frozen=True)
class Notice:
    """One notification: `insert` (a queued task of task_type), `queued` (a waiting one released),
    `cancel` (task_id), or another event."""

    event: str
    task_type: str | None = None
    task_id: str | None = None

    @classmethod
    def parse(cls, payload: str) -> "Notice":
        try:
            data = json.loads(payload)
        except ValueError:
            return cls("unknown")
        if not isinstance(data, dict):
            return cls("unknown")
        return cls(str(data.get("event", "unknown")), data.get("task_type"), data.get("task_id"))


class TaskListener:
    """LISTEN on CHANNEL, hand each notification to on_notice, reconnect with backoff when the connection drops."""

    def __init__(self, url: str, name: str, on_notice: Callable[[Notice], None],
                 on_connect: Callable[[], None] = lambda: None, *, probe_timeout_s: float = 5.0,
                 ping_interval_s: float = 30.0, max_backoff_s: float = 30.0) -> None:
        self.url = url
        self.application_name = f"supabase_sync listen {name}"[:63]
        self.on_notice = on_notice
        self.on_connect = on_connect
        self.probe_timeout_s = probe_timeout_s
        self.ping_interval_s = ping_interval_s
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.connections = 0   # successful connections so far (1 + reconnections)
        self.notifications = 0
        self.backend_pid: int | None = None
        # pg_notification_queue_usage() at the last ping: a listener that stops reading (a frozen
        # process) holds the server's notification queue back, and a full queue fails every NOTIFY.
        self.queue_usage: float | None = None

    async def connect(self) -> Any:
        """Connect, LISTEN and hear the probe; raises ListenUnavailable, or psycopg's error when unreachable."""
        conn = await connect_async(self.url, self.application_name)
        try:
            await conn.execute(f"listen {CHANNEL}")
            probe = json.dumps({"event": "probe", "id": uuid.uuid4().hex})
            await conn.execute("select pg_notify(%s, %s)", (CHANNEL, probe))
            heard = False
            notes = conn.notifies(timeout=self.probe_timeout_s)
            try:
                async for note in notes:
                    if note.payload == probe:
                        heard = True
                        break
                    self._handle(note.payload)
            finally:
                await notes.aclose()  # it holds the connection's lock until closed
            if not heard:
                raise ListenUnavailable(
                    f"LISTEN on {describe(self.url)} did not hear its own probe notification within "
                    f"{self.probe_timeout_s:g} s: this connection cannot LISTEN. A transaction-mode pooler (Supabase's "
                    "port 6543, PgBouncer in transaction mode) hands each transaction to another server connection. "
                    "Use the direct connection (db.<project ref>.supabase.co:5432) or the session pooler (port 5432)"
                )
        except BaseException:
            await conn.close()
            raise
        self.backend_pid = conn.info.backend_pid
        self.connections += 1
        self.connected = True
        log.info("listening on %s for new and cancelled tasks (connection %d, backend pid %s)",
                 describe(self.url), self.connections, self.backend_pid)
        return conn

    async def run(self, stop: asyncio.Event, conn: Any = None) -> None:
        """Listen until stop is set; `conn` is a connection from connect(), else one is made here."""
        import psycopg

        backoff = 0.5
        while not stop.is_set():
            if conn is None:
                try:
                    conn = await self.connect()
                except (psycopg.Error, OSError, ListenUnavailable) as exc:
                    delay = backoff * (0.5 + random.random() / 2)
                    log.warning("LISTEN connection to %s failed (%s); retrying in %.1f s", describe(self.url),
                                _reason(exc), delay)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    await _sleep_or_stop(stop, delay)
                    continue
            backoff = 0.5
            self._notify_connected()
            try:
                await self._listen(conn, stop)
            except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", _reason(exc))
            finally:
                self.connected = False
                await _close_quietly(conn)
                conn = None

    def _notify_connected(self) -> None:
        # A round right away: whatever was inserted while no connection listened.
        try:
            self.on_connect()
        except Exception:  # a callback's failure must not end the listener
            log.exception("on_connect failed")

    async def _listen(self, conn: Any, stop: asyncio.Event) -> None:
        last_ping = time.monotonic()
        while not stop.is_set():
            async for note in conn.notifies(timeout=1.0):  # short: stop is checked between
                self._handle(note.payload)
            if time.monotonic() - last_ping >= self.ping_interval_s:
                # a connection that died without a word (no FIN) is found here, not never
                cursor = await asyncio.wait_for(conn.execute("select pg_notification_queue_usage()"), timeout=10)
                self.queue_usage = float((await cursor.fetchone())[0])
                if self.queue_usage >= 0.5:
                    log.warning("the server's NOTIFY queue is %.0f%% full: a listening session is not reading "
                                "(a frozen process?); at 100%% every NOTIFY, and so every INSERT, fails",
                                self.queue_usage * 100)
                last_ping = time.monotonic()

    def _handle(self, payload: str) -> None:
        notice = Notice.parse(payload)
        if notice.event == "probe":
            return  # another dispatcher's (or an earlier connection's) probe
        self.notifications += 1
        try:
            self.on_notice(notice)
        except Exception:
            log.exception("handling notification %r failed", payload)


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:
        pass


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
