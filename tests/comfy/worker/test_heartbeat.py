"""The worker's heartbeat into `workers`, through the real supabase client and the API double."""

from __future__ import annotations

import time
import uuid

from comfy.worker.heartbeat import WorkerHeartbeat
from tests.supabase_sync.harness import wait_for_sync
from tests.supabase_sync.test_schema import SEED_WORKERS_QUERY


def test_without_supabase_credentials_it_does_nothing():
    beat = WorkerHeartbeat.from_env({"RUNPOD_POD_ID": "p1"})
    assert not beat.enabled and beat.worker_id == "comfy-worker-p1"
    beat.start()
    beat.task_started(str(uuid.uuid4()))
    beat.stop()
    assert beat.beats == 0 and beat.failures == 0


def test_the_seeds_monitoring_query_shows_the_worker_and_its_current_task(db):
    beat = WorkerHeartbeat.from_env({"RUNPOD_POD_ID": "pod-7", "SUPABASE_URL": db.url,
                                     "SUPABASE_SERVICE_ROLE_KEY": db.service_key, "HEARTBEAT_INTERVAL": "0.2"}).start()
    task_id = str(uuid.uuid4())
    try:
        wait_for_sync(lambda: db.sql(SEED_WORKERS_QUERY), what="the worker row")
        beat.task_started(task_id)
        wait_for_sync(lambda: str(db.sql(SEED_WORKERS_QUERY)[0]["current_task_id"]) == task_id, what="current task")
        assert db.sql(SEED_WORKERS_QUERY)[0]["status"] == "busy"
        first = db.sql(SEED_WORKERS_QUERY)[0]["last_heartbeat"]
        wait_for_sync(lambda: db.sql(SEED_WORKERS_QUERY)[0]["last_heartbeat"] > first, what="a later beat")
        beat.task_finished(task_id)
        wait_for_sync(lambda: db.sql(SEED_WORKERS_QUERY)[0]["current_task_id"] is None, what="idle")
    finally:
        beat.stop()
    [row] = db.sql(SEED_WORKERS_QUERY)
    assert row["id"] == "comfy-worker-pod-7" and row["status"] == "stopped"


def test_an_unreachable_supabase_never_blocks_or_breaks_the_caller():
    beat = WorkerHeartbeat("comfy-worker-x", "http://127.0.0.1:9", WorkerHeartbeat.__name__ + ".a.b", interval_s=0.1).start()
    try:
        started = time.monotonic()
        for _ in range(100):
            task = str(uuid.uuid4())
            beat.task_started(task)
            beat.task_finished(task)
        assert time.monotonic() - started < 0.1
        wait_for_sync(lambda: beat.failures >= 2, what="failed beats")
    finally:
        beat.stop(timeout_s=1)
    assert beat.beats == 0


def test_a_task_id_that_is_not_a_uuid_is_not_sent(db):
    beat = WorkerHeartbeat("comfy-worker-y", db.url, db.service_key, interval_s=0.2).start()
    try:
        beat.task_started("not-a-uuid")
        wait_for_sync(lambda: beat.beats >= 2, what="beats")
    finally:
        beat.stop()
    assert beat.failures == 0
    assert db.sql("select current_task_id from workers where id = 'comfy-worker-y'") == [{"current_task_id": None}]


def test_a_pipelining_worker_shows_every_current_task_in_the_order_they_started(db):
    beat = WorkerHeartbeat("comfy-worker-pipe", db.url, db.service_key, interval_s=0.2).start()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    def row() -> dict:
        rows = db.sql("select status, current_task_id, current_task_ids from workers where id = 'comfy-worker-pipe'")
        return rows[0] if rows else {}

    try:
        beat.task_started(first)
        beat.task_started(second)
        wait_for_sync(lambda: [str(t) for t in row().get("current_task_ids") or []] == [first, second], what="both tasks")
        assert str(row()["current_task_id"]) == first and row()["status"] == "busy"
        beat.task_finished(first)
        wait_for_sync(lambda: [str(t) for t in row()["current_task_ids"]] == [second], what="one left")
        assert str(row()["current_task_id"]) == second
        beat.task_finished(second)
        wait_for_sync(lambda: row()["current_task_ids"] == [] and row()["status"] == "idle", what="idle")
        assert row()["current_task_id"] is None
    finally:
        beat.stop()
    assert beat.failures == 0


def test_against_a_database_without_current_task_ids_the_first_task_is_still_shown(db):
    # A worker deployed before the database got 0100_worker_current_tasks.sql.
    db.sql("drop function heartbeat(text, text, uuid, jsonb, uuid[])")
    db.sql("""create function heartbeat(p_worker_id text, p_status text default 'active', p_current_task_id uuid default null,
                                        p_metadata jsonb default null) returns timestamptz language sql as $$
              insert into workers (id, status, current_task_id) values (p_worker_id, p_status, p_current_task_id)
              on conflict (id) do update set status = excluded.status, current_task_id = excluded.current_task_id,
                                             last_heartbeat = now()
              returning last_heartbeat $$""")
    db.sql("grant execute on function heartbeat(text, text, uuid, jsonb) to service_role")
    beat = WorkerHeartbeat("comfy-worker-old-db", db.url, db.service_key, interval_s=0.2).start()
    first = str(uuid.uuid4())
    try:
        beat.task_started(first)
        beat.task_started(str(uuid.uuid4()))
        wait_for_sync(lambda: [str(r["current_task_id"]) for r in
                               db.sql("select current_task_id from workers where id = 'comfy-worker-old-db'")] == [first],
                      what="the first task")
    finally:
        beat.stop()
    assert beat.failures == 0  # the unknown argument was dropped, not a failed beat every time
