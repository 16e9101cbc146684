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
    beat.set_current_task(str(uuid.uuid4()))
    beat.stop()
    assert beat.beats == 0 and beat.failures == 0


def test_the_seeds_monitoring_query_shows_the_worker_and_its_current_task(db):
    beat = WorkerHeartbeat.from_env({"RUNPOD_POD_ID": "pod-7", "SUPABASE_URL": db.url,
                                     "SUPABASE_SERVICE_ROLE_KEY": db.service_key, "HEARTBEAT_INTERVAL": "0.2"}).start()
    task_id = str(uuid.uuid4())
    try:
        wait_for_sync(lambda: db.sql(SEED_WORKERS_QUERY), what="the worker row")
        beat.set_current_task(task_id)
        wait_for_sync(lambda: str(db.sql(SEED_WORKERS_QUERY)[0]["current_task_id"]) == task_id, what="current task")
        assert db.sql(SEED_WORKERS_QUERY)[0]["status"] == "busy"
        first = db.sql(SEED_WORKERS_QUERY)[0]["last_heartbeat"]
        wait_for_sync(lambda: db.sql(SEED_WORKERS_QUERY)[0]["last_heartbeat"] > first, what="a later beat")
        beat.set_current_task(None)
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
            beat.set_current_task(str(uuid.uuid4()))
        assert time.monotonic() - started < 0.1
        wait_for_sync(lambda: beat.failures >= 2, what="failed beats")
    finally:
        beat.stop(timeout_s=1)
    assert beat.beats == 0


def test_a_task_id_that_is_not_a_uuid_is_not_sent(db):
    beat = WorkerHeartbeat("comfy-worker-y", db.url, db.service_key, interval_s=0.2).start()
    try:
        beat.set_current_task("not-a-uuid")
        wait_for_sync(lambda: beat.beats >= 2, what="beats")
    finally:
        beat.stop()
    assert beat.failures == 0
    assert db.sql("select current_task_id from workers where id = 'comfy-worker-y'") == [{"current_task_id": None}]
