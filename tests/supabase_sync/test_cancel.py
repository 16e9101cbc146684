"""A cancel by plain `UPDATE tasks SET status = 'cancelled'` reaches RunPod's /cancel
promptly: on the next round (the update clears the lease: 0060's trigger as 0090 made it),
at once through LISTEN (tests/supabase_sync/test_listen.py) or pg_net's wake-up (0092), and
once per job however many dispatchers are woken, by both at once."""

from __future__ import annotations

import asyncio
import time

from supabase_sync.migrations import migration
from tests.supabase_sync.harness import ENDPOINT, TRIGGER_SECRET, make_settings, running, wait_for
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS


def install_pg_net_wake_ups(db) -> None:
    """pg_net's stand-in, then 0003 and 0092 as `migrate --with 0003 --with 0092` would apply them."""
    from tests.fixtures.pgcluster import PG_NET_STUB_SQL

    db.sql(PG_NET_STUB_SQL)
    for version in ("0003", "0092"):
        applied = db.cluster.psql_file(migration(version).path, dbname=db.name)
        assert applied.returncode == 0, applied.stderr


def _cancel_by_update_and_time_it(db, emulator, settings, within_s: float) -> float:
    task_id = db.insert_task("comfy", SEED_PARAMS)

    async def scenario() -> float:
        async with running(settings):
            job_id = await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            emulator.take_job(ENDPOINT)
            await asyncio.sleep(0.3)
            started = time.monotonic()
            db.sql("update tasks set status = 'cancelled' where task_id = %s", (task_id,))
            await wait_for(lambda: emulator.jobs[job_id].status == "CANCELLED", timeout_s=within_s,
                           what="RunPod /cancel")
            await wait_for(lambda: db.task(task_id)["runpod_cancelled_at"] is not None, what="marked")
            return time.monotonic() - started

    took = asyncio.run(scenario())
    row = db.task(task_id)
    assert row["status"] == "cancelled" and row["error_message"] == "cancelled" and row["completed_at"] is not None
    assert emulator.requests["cancel"] == 1
    return took


def test_a_plain_update_is_cancelled_on_runpod_on_the_next_round_not_after_the_status_interval(db, emulator):
    # STATUS_CHECK_INTERVAL=60: the in-flight task's lease (its next check) is a minute away
    settings = make_settings(db, emulator, POLL_INTERVAL="0.5", STATUS_CHECK_INTERVAL="60")
    _cancel_by_update_and_time_it(db, emulator, settings, within_s=10)


def test_with_the_pg_net_wake_up_a_plain_update_is_cancelled_at_once(db, emulator):
    from tests.doubles.pg_net import PgNetBridge

    install_pg_net_wake_ups(db)
    settings = make_settings(db, emulator, POLL_INTERVAL="30", STATUS_CHECK_INTERVAL="60")  # no round would do it
    db.sql("insert into dispatcher_wakeup (url, secret) values (%s, %s)",
           (f"http://127.0.0.1:{settings.listen_port}/hooks/supabase", TRIGGER_SECRET))
    bridge = PgNetBridge(db.dsn).start()
    try:
        took = _cancel_by_update_and_time_it(db, emulator, settings, within_s=10)
    finally:
        bridge.stop()
    # POLL_INTERVAL=30: only the cancel's wake-up can have sent /cancel this soon
    assert took < 10 and bridge.sent >= 1


def test_the_cancel_wake_up_migration_needs_0003_first(db):
    failed = db.cluster.psql_file(migration("0092").path, dbname=db.name)
    assert failed.returncode != 0 and "needs 0003_trigger_pg_net.sql" in failed.stderr


def test_an_insert_wake_up_runs_no_cancel_chore_and_any_other_one_does(db, emulator):
    import httpx

    settings = make_settings(db, emulator, POLL_INTERVAL="30")  # no chore round during the test

    async def scenario() -> tuple[int, int, int]:
        async with running(settings) as base, httpx.AsyncClient() as http:
            await asyncio.sleep(0.5)  # the first chore round is over
            calls = lambda: db.postgrest.calls_by_function.get("take_pending_cancels", 0)  # noqa: E731
            headers = {"X-Dispatcher-Secret": TRIGGER_SECRET}
            before = calls()
            await http.post(f"{base}/hooks/supabase", json={"type": "INSERT", "task_id": "x"}, headers=headers)
            await asyncio.sleep(0.5)
            after_insert = calls()
            await http.post(f"{base}/hooks/supabase", json={"type": "CANCEL", "task_id": "x"}, headers=headers)
            await wait_for(lambda: calls() > after_insert, timeout_s=5, what="the cancel chore")
            return before, after_insert, calls()

    before, after_insert, after_cancel = asyncio.run(scenario())
    assert after_insert == before and after_cancel == before + 1


def test_listen_and_pg_net_together_with_two_dispatchers_cancel_each_job_once_and_at_once(db, emulator):
    # Every wake-up reaches someone twice over: both dispatchers hear the NOTIFY, and the first
    # also gets pg_net's POST. take_pending_cancels leases each job to one of them.
    from tests.doubles.pg_net import PgNetBridge

    install_pg_net_wake_ups(db)
    common = dict(DATABASE_URL=db.dsn, POLL_INTERVAL="30", STATUS_CHECK_INTERVAL="60", CLAIM_LEASE_S="30")
    first = make_settings(db, emulator, DISPATCHER_ID="d-first", **common)
    second = make_settings(db, emulator, DISPATCHER_ID="d-second", **common)
    db.sql("insert into dispatcher_wakeup (url, secret) values (%s, %s)",
           (f"http://127.0.0.1:{first.listen_port}/hooks/supabase", TRIGGER_SECRET))
    bridge = PgNetBridge(db.dsn).start()
    tasks = [db.insert_task("comfy", SEED_PARAMS) for _ in range(6)]

    async def scenario() -> float:
        async with running(first), running(second):
            jobs = await wait_for(lambda: [db.task(t)["runpod_job_id"] for t in tasks] if all(
                db.task(t)["runpod_job_id"] for t in tasks) else None, what="all submitted")
            started = time.monotonic()
            db.sql("update tasks set status = 'cancelled' where task_id = any(%s::uuid[])", (tasks,))
            await wait_for(lambda: all(emulator.jobs[j].status == "CANCELLED" for j in jobs), timeout_s=10,
                           what="RunPod /cancel of every job")
            took = time.monotonic() - started
            await wait_for(lambda: all(db.task(t)["runpod_cancelled_at"] for t in tasks), what="marked")
            await asyncio.sleep(1.0)  # any second /cancel would have gone out by now
            return took

    try:
        took = asyncio.run(scenario())
    finally:
        bridge.stop()
    assert took < 10 and bridge.sent >= 1  # POLL_INTERVAL=30: only the wake-ups can have done it
    assert emulator.requests["cancel"] == len(tasks)  # each job once, not once per wake-up or dispatcher
    assert all(db.task(t)["error_message"] == "cancelled" for t in tasks)
