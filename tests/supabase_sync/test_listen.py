"""The LISTEN wake-up on the real PostgreSQL: INSERT -> /run and cancel -> /cancel without a public
URL, the listening connection killed and re-made, two listeners, and connections that cannot LISTEN."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg

from tests.comfy_env import ROOT, free_port
from tests.doubles.pg_pooler import NotificationDroppingProxy
from tests.doubles.tcp_proxy import TcpProxy
from tests.supabase_sync.harness import (ENDPOINT, DispatcherProcess, dispatcher_env, make_settings, running, wait_for,
                                         wait_for_sync)
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS

# The poll cannot be what finds a task in these tests; no webhooks, no pg_net hook either.
LISTEN_ONLY = {"POLL_INTERVAL": "30", "DISPATCHER_PUBLIC_URL": "", "WEBHOOK_SECRET": "", "TRIGGER_SECRET": ""}


def listeners(db) -> list[int]:
    rows = db.sql("select pid from pg_stat_activity where datname = %s and application_name like 'supabase_sync listen %%' "
                  "order by pid", (db.name,))
    return [row["pid"] for row in rows]


def test_an_insert_reaches_run_through_listen_once_it_commits(db, emulator):
    settings = make_settings(db, emulator, DATABASE_URL=db.dsn, **LISTEN_ONLY)

    async def scenario() -> None:
        async with running(settings) as base:
            await asyncio.sleep(0.3)  # the first round has run and found nothing
            with psycopg.connect(db.dsn) as writer:
                task_id = str(writer.execute("insert into tasks (task_type, params) values ('comfy', %s) returning task_id",
                                             (psycopg.types.json.Jsonb(SEED_PARAMS),)).fetchone()[0])
                await asyncio.sleep(0.5)
                assert emulator.submissions_for(task_id) == []  # not before the commit
            await wait_for(lambda: emulator.submissions_for(task_id), timeout_s=3, what="submitted through LISTEN")
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{base}/health")).json()
            assert health["wakeup"]["listen"] and health["wakeup"]["connected"]
            assert health["wakeup"]["notifications"] >= 1

    asyncio.run(scenario())
    assert db.task(emulator.submissions[0].input["task_id"])["runpod_job_id"] == emulator.submissions[0].id


def test_listen_works_through_a_session_mode_pooler(db, emulator):
    # A session-mode pooler (Supavisor on port 5432) gives each client session its own server
    # connection for as long as it lasts: to the client, a plain pass-through.
    pooler = TcpProxy(db.cluster.port)
    url = f"host=127.0.0.1 port={pooler.port} user=postgres dbname={db.name} sslmode=disable"
    settings = make_settings(db, emulator, DATABASE_URL=url, **LISTEN_ONLY)

    async def scenario() -> None:
        async with running(settings):
            await asyncio.sleep(0.3)
            task_id = db.insert_task("comfy", SEED_PARAMS)
            await wait_for(lambda: emulator.submissions_for(task_id), timeout_s=3, what="submitted through the pooler")

    try:
        asyncio.run(scenario())
    finally:
        pooler.close()


def test_a_cancel_notification_cancels_the_runpod_job_at_once(db, emulator):
    settings = make_settings(db, emulator, DATABASE_URL=db.dsn, STATUS_CHECK_INTERVAL="60", **LISTEN_ONLY)

    async def scenario() -> None:
        async with running(settings):
            await asyncio.sleep(0.3)
            task_id = db.insert_task("comfy", SEED_PARAMS)
            job_id = await wait_for(lambda: db.task(task_id)["runpod_job_id"], timeout_s=3, what="submitted")
            emulator.take_job(ENDPOINT)
            db.sql("update tasks set status = 'cancelled' where task_id = %s", (task_id,))  # no cancel_task: a plain UPDATE
            await wait_for(lambda: emulator.jobs[job_id].status == "CANCELLED", timeout_s=3, what="RunPod /cancel")
            await wait_for(lambda: db.task(task_id)["runpod_cancelled_at"] is not None, timeout_s=3, what="marked")

    asyncio.run(scenario())
    assert emulator.requests["cancel"] == 1


def test_the_listening_connection_killed_reconnects_and_no_task_is_missed(db, emulator):
    settings = make_settings(db, emulator, DATABASE_URL=db.dsn, **LISTEN_ONLY)

    async def scenario() -> None:
        async with running(settings) as base:
            await asyncio.sleep(0.3)
            first = db.insert_task("comfy", SEED_PARAMS)
            await wait_for(lambda: emulator.submissions_for(first), timeout_s=3, what="the first task")
            [old_pid] = listeners(db)
            missed = []
            for _ in range(2):  # killed twice; tasks inserted while no connection listens
                [pid] = await wait_for(lambda: listeners(db) or None, timeout_s=10, what="a listener")
                db.sql("select pg_terminate_backend(%s)", (pid,))
                missed += [db.insert_task("comfy", SEED_PARAMS) for _ in range(3)]
                await wait_for(lambda: all(emulator.submissions_for(t) for t in missed), timeout_s=10,
                               what="the tasks inserted during the outage")
            [new_pid] = await wait_for(lambda: listeners(db) or None, timeout_s=10, what="the new listener")
            assert new_pid != old_pid
            after = db.insert_task("comfy", SEED_PARAMS)
            await wait_for(lambda: emulator.submissions_for(after), timeout_s=3, what="submitted through the new LISTEN")
            async with httpx.AsyncClient() as http:
                wakeup = (await http.get(f"{base}/health")).json()["wakeup"]
            assert wakeup["connected"] and wakeup["connections"] == 3

    asyncio.run(scenario())
    submitted = [job.input["task_id"] for job in emulator.submissions]
    assert len(submitted) == len(set(submitted)) == 8


def test_two_listening_dispatchers_submit_each_task_once(db, emulator, tmp_path):
    routes = tmp_path / "routes.json"  # nothing finishes here: the in-flight limit must not be what stops them
    routes.write_text(json.dumps({"routes": [{"endpoint_id": ENDPOINT, "task_types": ["comfy"], "max_in_flight": 100}]}))
    procs = []
    try:
        for n in range(2):
            env = dispatcher_env(db, emulator, free_port(), DATABASE_URL=db.dsn, DISPATCHER_ID=f"listener-{n}",
                                 CLAIM_LEASE_S="30", DISPATCHER_ROUTES="", DISPATCHER_ROUTES_FILE=str(routes),
                                 **LISTEN_ONLY)
            procs.append(DispatcherProcess(env, tmp_path / f"d{n}.log").start())
        wait_for_sync(lambda: len(listeners(db)) == 2, timeout_s=15, what="two listeners")
        tasks = []
        for _ in range(40):
            tasks.append(db.insert_task("comfy", SEED_PARAMS))
            time.sleep(0.02)  # one at a time, as clients insert them
        wait_for_sync(lambda: len(emulator.submissions) >= 40, timeout_s=30, what="all 40 submitted")
        time.sleep(1.0)  # anything submitted twice would show up now
        heard = [httpx.get(f"http://127.0.0.1:{p.env['DISPATCHER_PORT']}/health").json()["wakeup"]["notifications"]
                 for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
    submitted = [job.input["task_id"] for job in emulator.submissions]
    assert sorted(submitted) == sorted(tasks)  # each task once, none twice
    assert all(count >= 40 for count in heard), heard  # both were told about every insert
    claimers = {row["claimed_by"] for row in db.sql("select claimed_by from tasks")}
    assert claimers <= {"listener-0", "listener-1"}


def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supabase_sync"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_a_transaction_mode_pooler_url_stops_the_start_with_the_reason(db, emulator):
    env = dispatcher_env(db, emulator, free_port(),
                         DATABASE_URL="postgresql://postgres.ref:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres")
    done = _start(env)
    assert done.returncode == 2
    assert "configuration error: DATABASE_URL points at port 6543, Supabase's transaction-mode pooler" in done.stderr
    assert "pw@" not in done.stderr


def test_a_connection_that_cannot_listen_stops_the_start_with_the_reason(db, emulator):
    proxy = NotificationDroppingProxy(db.cluster.port)
    try:
        env = dispatcher_env(db, emulator, free_port(), DATABASE_URL=proxy.dsn(dbname=db.name))
        done = _start(env)
    finally:
        proxy.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "did not hear its own probe notification within 5 s: this connection cannot LISTEN" in done.stderr
    assert "transaction-mode pooler" in done.stderr and "session pooler (port 5432)" in done.stderr
    assert proxy.dropped >= 1


def test_a_frozen_listening_dispatcher_holds_nothing_up_and_submits_nothing_twice(db, emulator, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": [{"endpoint_id": ENDPOINT, "task_types": ["comfy"], "max_in_flight": 100}]}))
    procs = [DispatcherProcess(dispatcher_env(db, emulator, free_port(), DATABASE_URL=db.dsn, DISPATCHER_ID=f"d{n}",
                                              DISPATCHER_ROUTES="", DISPATCHER_ROUTES_FILE=str(routes),
                                              CLAIM_LEASE_S="30", **LISTEN_ONLY), tmp_path / f"d{n}.log").start()
             for n in range(2)]
    frozen, awake = procs
    try:
        wait_for_sync(lambda: len(listeners(db)) == 2, timeout_s=15, what="two listeners")
        frozen.proc.send_signal(signal.SIGSTOP)  # its connection stays open; it reads nothing
        tasks = [db.insert_task("comfy", SEED_PARAMS) for _ in range(10)]
        wait_for_sync(lambda: all(emulator.submissions_for(t) for t in tasks), timeout_s=10,
                      what="the awake dispatcher submitting everything")
        frozen.proc.send_signal(signal.SIGCONT)  # it reads ten old notifications now
        time.sleep(1.5)
        late = db.insert_task("comfy", SEED_PARAMS)
        wait_for_sync(lambda: emulator.submissions_for(late), timeout_s=5, what="a task after the thaw")
    finally:
        if frozen.proc and frozen.proc.poll() is None:
            frozen.proc.send_signal(signal.SIGCONT)
        for proc in procs:
            proc.terminate()
    submitted = [job.input["task_id"] for job in emulator.submissions]
    assert sorted(submitted) == sorted(tasks + [late])
    assert {r["claimed_by"] for r in db.sql("select claimed_by from tasks where task_id = any(%s::uuid[])",
                                            (tasks,))} == {"d1"}


def test_the_listener_hands_over_every_notification_and_reports_the_notify_queue(db):
    from supabase_sync.listener import Notice, TaskListener

    notices: list[Notice] = []
    connects: list[int] = []

    async def scenario() -> TaskListener:
        listener = TaskListener(db.dsn, "unit", notices.append, lambda: connects.append(1), ping_interval_s=0.1)
        stop = asyncio.Event()
        running_listener = asyncio.create_task(listener.run(stop))
        await wait_for(lambda: listener.connected, timeout_s=10, what="connected")
        db.insert_task("comfy", SEED_PARAMS)
        db.sql("select pg_notify('supabase_sync', 'not json')")
        db.sql("select pg_notify('supabase_sync', '{\"event\": \"probe\", \"id\": \"someone else\"}')")
        await wait_for(lambda: len(notices) == 2 and listener.queue_usage is not None, timeout_s=10, what="notices")
        stop.set()
        await asyncio.wait_for(running_listener, 10)
        return listener

    listener = asyncio.run(scenario())
    assert notices == [Notice("insert", "comfy"), Notice("unknown")]  # others' probes are not handed over
    assert connects == [1] and listener.queue_usage == 0.0 and not listener.connected


def test_a_dependant_released_by_another_dispatchers_completion_is_submitted_through_listen(db, emulator):
    settings = make_settings(db, emulator, DATABASE_URL=db.dsn, routes=f"vace={ENDPOINT}", **LISTEN_ONLY)
    first = db.insert_task("comfy", SEED_PARAMS)  # another route's type: this dispatcher never claims it
    dependant = db.insert_task("vace", {"prompt": "a cat"}, depends_on=[first])

    async def scenario() -> None:
        async with running(settings):
            await asyncio.sleep(0.5)
            assert emulator.submissions_for(dependant) == []  # waiting
            [c] = db.sql("select * from claim_tasks('elsewhere', 'other-ep', array['comfy'], 1)")
            db.sql("select complete_task(%s, %s, null, 'https://cdn.test/a.png', '{}')", (first, c["lease_token"]))
            await wait_for(lambda: emulator.submissions_for(dependant), timeout_s=3, what="the released dependant")

    asyncio.run(scenario())
