"""The SQL: the seed's statements, the state machine's guarantees, grants, the trigger."""

from __future__ import annotations

import asyncio
import json
import select
import uuid

import psycopg
import pytest
from postgrest.exceptions import APIError
from supabase import acreate_client

from supabase_sync.migrations import MIGRATIONS_DIR, migration
from tests.fixtures.pgcluster import PG_NET_STUB_SQL

SEED_INSERT = """
INSERT INTO tasks (task_type, params, status)
VALUES (
  'comfy',
  '{
    "workflow": {
      "1": {"inputs": {"video": "input.mp4", "force_rate": 0, "custom_width": 0, "custom_height": 0,
                       "frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": 1},
            "class_type": "VHS_LoadVideo"},
      "2": {"inputs": {"images": ["1", 0], "frame_rate": 30, "format": "video/h264-mp4",
                       "save_output": true, "pingpong": false},
            "class_type": "VHS_VideoCombine"}
    },
    "video_url": "https://example.com/input.mp4",
    "video_node_id": "1",
    "video_input_field": "video"
  }',
  'queued'
);
"""
SEED_WORKERS_QUERY = """
SELECT id, status, current_task_id, last_heartbeat
FROM workers
WHERE id LIKE 'comfy-worker-%'
ORDER BY created_at DESC;
"""
SEED_TASKS_QUERY = """
SELECT task_id, task_type, status, created_at, started_at, completed_at
FROM tasks
WHERE task_type = 'comfy'
ORDER BY created_at DESC
LIMIT 10;
"""
SEED_OUTPUT_QUERY = "SELECT output_url FROM tasks WHERE task_id = %s;"


def claim(db, dispatcher="d1", limit=10, max_in_flight=None, lease_s=60, types=("comfy",), endpoint="ep"):
    return db.sql("select * from claim_tasks(%s, %s, %s, %s, %s, %s)",
                  (dispatcher, endpoint, list(types), limit, max_in_flight, lease_s))


def test_the_seeds_insert_and_monitoring_queries_run_unchanged(db):
    db.sql(SEED_INSERT)
    db.sql("select heartbeat('comfy-worker-pod1', 'active', null, null)")
    [task] = db.sql(SEED_TASKS_QUERY)
    assert task["status"] == "queued" and task["task_type"] == "comfy" and task["started_at"] is None
    [worker] = db.sql(SEED_WORKERS_QUERY)
    assert worker["id"] == "comfy-worker-pod1" and worker["current_task_id"] is None
    assert db.sql(SEED_OUTPUT_QUERY, (task["task_id"],)) == [{"output_url": None}]
    row = db.task(task["task_id"])
    assert row["attempts"] == 0 and row["max_attempts"] == 3 and row["params"]["video_node_id"] == "1"


def test_a_status_outside_the_life_cycle_is_refused(db):
    with pytest.raises(psycopg.errors.CheckViolation):
        db.sql("insert into tasks (task_type, status) values ('comfy', 'Queued')")


def test_claim_takes_oldest_first_and_gives_each_claim_a_new_lease_token(db):
    first, second = db.insert_task(), db.insert_task()
    rows = claim(db, limit=1)
    assert [str(r["task_id"]) for r in rows] == [first]
    rows2 = claim(db, limit=5)
    assert [str(r["task_id"]) for r in rows2] == [second]
    assert rows[0]["lease_token"] != rows2[0]["lease_token"]
    assert db.task(first)["status"] == "in_progress" and db.task(first)["claimed_by"] == "d1"


def test_claim_skips_rows_locked_by_another_transaction(db):
    locked, free = db.insert_task(), db.insert_task()
    with psycopg.connect(db.dsn) as other:
        other.execute("select 1 from tasks where task_id = %s for update", (locked,))
        rows = claim(db)  # does not wait for the lock
        assert [str(r["task_id"]) for r in rows] == [free]


def test_claim_respects_run_after_and_max_in_flight(db):
    later = db.insert_task(run_after="2999-01-01")
    for _ in range(4):
        db.insert_task()
    assert len(claim(db, max_in_flight=2)) == 2
    assert claim(db, max_in_flight=2) == []
    assert len(claim(db, max_in_flight=3)) == 1
    assert later not in [str(r["task_id"]) for r in claim(db)]


def test_claim_rejects_a_bad_limit_with_a_clear_error(db):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_limit must be at least 1"):
        claim(db, limit=0)


def test_write_backs_apply_only_under_the_current_lease_and_complete_once(db):
    task_id = db.insert_task()
    [c] = claim(db)
    token = c["lease_token"]
    attach = db.sql("select * from attach_runpod_jobs(%s, 30)",
                    (json.dumps([{"task_id": task_id, "lease_token": str(token), "runpod_job_id": "job-1"}]),))
    assert attach[0]["outcome"] == "applied"
    wrong = str(uuid.uuid4())
    assert db.sql("select complete_task(%s, %s, 'job-1', 'u', '{}') o", (task_id, wrong))[0]["o"] == "stale"
    assert db.sql("select complete_task(%s, %s, 'job-other', 'u', '{}') o", (task_id, token))[0]["o"] == "stale"
    assert db.sql("select complete_task(%s, %s, 'job-1', 'https://x', '{}') o", (task_id, token))[0]["o"] == "applied"
    assert db.sql("select complete_task(%s, %s, 'job-1', 'https://y', '{}') o", (task_id, token))[0]["o"] == "stale"
    assert db.sql("select fail_task(%s, %s, 'job-1', 'late', true) o", (task_id, token))[0]["o"] == "stale"
    row = db.task(task_id)
    assert row["status"] == "complete" and row["output_url"] == "https://x"
    missing = str(uuid.uuid4())
    assert db.sql("select complete_task(%s, %s, null, null, null) o", (missing, token))[0]["o"] == "not_found"


def test_fail_retries_with_backoff_until_max_attempts(db):
    task_id = db.insert_task(max_attempts=2)
    [c] = claim(db)
    assert db.sql("select fail_task(%s, %s, null, 'boom', true, 100, 600) o", (task_id, c["lease_token"]))[0]["o"] == "queued"
    row = db.task(task_id)
    assert row["status"] == "queued" and row["error_message"] == "boom" and row["lease_token"] is None
    wait = db.sql("select extract(epoch from run_after - now()) s from tasks where task_id = %s", (task_id,))[0]["s"]
    assert 40 < wait <= 100  # base 100 s for the first retry, jittered into [50%, 100%]
    assert claim(db) == []  # not before run_after
    db.sql("update tasks set run_after = now() where task_id = %s", (task_id,))
    [c2] = claim(db)
    assert db.sql("select fail_task(%s, %s, null, 'boom again', true) o", (task_id, c2["lease_token"]))[0]["o"] == "failed"
    row = db.task(task_id)
    assert row["status"] == "failed" and row["error_message"] == "boom again (gave up after 2 attempts)"


def test_a_permanent_failure_is_not_retried(db):
    task_id = db.insert_task(max_attempts=5)
    [c] = claim(db)
    assert db.sql("select fail_task(%s, %s, null, 'no workflow', false) o", (task_id, c["lease_token"]))[0]["o"] == "failed"
    assert db.task(task_id)["error_message"] == "no workflow"


def test_release_gives_the_attempt_back_but_not_once_a_job_exists(db):
    task_id = db.insert_task()
    [c] = claim(db)
    assert db.sql("select release_task(%s, %s, 0, '429') o", (task_id, c["lease_token"]))[0]["o"] == "applied"
    assert db.task(task_id)["attempts"] == 0 and db.task(task_id)["status"] == "queued"
    [c] = claim(db)
    db.sql("select * from attach_runpod_jobs(%s)",
           (json.dumps([{"task_id": task_id, "lease_token": str(c["lease_token"]), "runpod_job_id": "j"}]),))
    assert db.sql("select release_task(%s, %s, 0, 'x') o", (task_id, c["lease_token"]))[0]["o"] == "stale"
    assert db.task(task_id)["status"] == "in_progress"


def test_expired_claims_without_a_job_are_requeued_and_those_with_a_job_are_polled(db):
    lost, submitted = db.insert_task(), db.insert_task()
    rows = {str(r["task_id"]): r for r in claim(db, lease_s=0.01)}
    db.sql("select * from attach_runpod_jobs(%s, 0)", (json.dumps(
        [{"task_id": submitted, "lease_token": str(rows[submitted]["lease_token"]), "runpod_job_id": "job-s"}]),))
    db.sql("select pg_sleep(0.05)")
    requeued = db.sql("select * from requeue_lost_claims()")
    assert [(str(r["task_id"]), r["outcome"], r["claimed_by"]) for r in requeued] == [(lost, "queued", "d1")]
    row = db.task(lost)
    assert "claim of dispatcher d1 expired before a RunPod job was recorded" in row["error_message"]
    assert row["attempts"] == 0 and row["lost_claims"] == 1  # the attempt is given back
    due = db.sql("select * from take_due_polls('d2', 10, 30)")
    assert [str(r["task_id"]) for r in due] == [submitted] and due[0]["runpod_job_id"] == "job-s"
    assert db.sql("select * from take_due_polls('d3', 10, 30)") == []  # pushed out, not handed twice
    # the old claim's token is dead for the requeued task
    assert db.sql("select record_progress(%s, %s, '{}') o", (lost, rows[lost]["lease_token"]))[0]["o"] == "stale"


def test_a_task_that_keeps_losing_its_claim_ends_failed_without_spending_attempts(db):
    task_id = db.insert_task(max_attempts=1, max_lost_claims=3)
    for lost in range(1, 4):
        assert len(claim(db, lease_s=0.01)) == 1
        db.sql("select pg_sleep(0.02)")
        [row] = db.sql("select * from requeue_lost_claims()")
        assert row["outcome"] == ("failed" if lost == 3 else "queued")
        assert db.task(task_id)["attempts"] == 0
    row = db.task(task_id)
    assert row["status"] == "failed" and row["lost_claims"] == 3 and row["completed_at"] is not None
    assert row["error_message"].startswith("gave up: the task's claim was lost 3 times (max_lost_claims)")


def test_cancel_and_pending_runpod_cancels(db):
    queued, running, done = db.insert_task(), db.insert_task(), db.insert_task()
    rows = {str(r["task_id"]): r for r in claim(db)}
    db.sql("select * from attach_runpod_jobs(%s)", (json.dumps(
        [{"task_id": running, "lease_token": str(rows[running]["lease_token"]), "runpod_job_id": "job-r"}]),))
    db.sql("select complete_task(%s, %s, null, null, null)", (done, rows[done]["lease_token"]))
    db.sql("update tasks set status = 'queued', lease_token = null where task_id = %s", (queued,))
    assert db.sql("select cancel_task(%s) o", (queued,))[0]["o"] == "cancelled"
    assert db.sql("select cancel_task(%s) o", (running,))[0]["o"] == "cancelled"
    assert db.sql("select cancel_task(%s) o", (done,))[0]["o"] == "already_final"
    assert db.sql("select cancel_task(%s) o", (str(uuid.uuid4()),))[0]["o"] == "not_found"
    pending = db.sql("select * from take_pending_cancels(10, 30)")
    assert [(str(p["task_id"]), p["runpod_job_id"]) for p in pending] == [(running, "job-r")]
    assert db.sql("select mark_runpod_cancelled(%s) o", (running,))[0]["o"] == "applied"
    assert db.sql("select complete_task(%s, %s, 'job-r', 'u', '{}') o", (running, rows[running]["lease_token"]))[0]["o"] == "stale"


def test_heartbeat_upserts_the_workers_row(db):
    db.sql("select heartbeat('comfy-worker-a', 'busy', %s, '{\"gpu\": \"x\"}')", (str(uuid.uuid4()),))
    first = db.sql("select * from workers")[0]
    db.sql("select heartbeat('comfy-worker-a', 'idle', null, null)")
    [row] = db.sql("select * from workers")
    assert row["status"] == "idle" and row["current_task_id"] is None
    assert row["metadata"] == {"gpu": "x"} and row["last_heartbeat"] >= first["last_heartbeat"]


def _as_role(db, role, query):
    with psycopg.connect(db.dsn) as conn:
        conn.execute(f"set role {role}")
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_read_the_tables_or_call_the_functions(db, role):
    db.insert_task()
    for query in ("select * from tasks", "select * from workers", "insert into tasks (task_type) values ('x')",
                  "select * from claim_tasks('x', 'ep', array['comfy'], 1)", "select heartbeat('w')",
                  "select * from queue_stats()"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _as_role(db, role, query)
    assert _as_role(db, "service_role", "select count(*) from tasks") == [(1,)]
    flags = db.sql("select relname, relrowsecurity from pg_class where relname in ('tasks', 'workers')")
    assert all(f["relrowsecurity"] for f in flags)


def test_through_the_api_only_the_service_role_key_may_call_the_functions(db):
    db.insert_task()

    async def call(key):
        client = await acreate_client(db.url, key)
        return await client.rpc("claim_tasks", {"p_dispatcher": "x", "p_endpoint_id": "ep",
                                                "p_task_types": ["comfy"], "p_limit": 1}).execute()

    for key, status in ((db.anon_key, "401"), (db.authenticated_key, "403")):
        with pytest.raises(APIError) as info:
            asyncio.run(call(key))
        assert info.value.code == "42501" and "permission denied" in info.value.message
    assert db.task(db.sql("select task_id from tasks")[0]["task_id"])["status"] == "queued"
    assert len(asyncio.run(call(db.service_key)).data) == 1


def test_the_pg_net_trigger_migration_applies_and_sends_a_wake_up_after_commit(db):
    trigger_sql = migration("0003").path
    # without pg_net: a clear refusal
    failed = db.cluster.psql_file(trigger_sql, dbname=db.name)
    assert failed.returncode != 0 and "needs the pg_net extension" in failed.stderr
    db.sql(PG_NET_STUB_SQL)
    applied = db.cluster.psql_file(trigger_sql, dbname=db.name)
    assert applied.returncode == 0, applied.stderr
    db.insert_task()  # no destination configured: the insert still works, nothing is sent
    db.sql("insert into dispatcher_wakeup (url, secret) values ('http://127.0.0.1:9/hooks/supabase', 's3cret')")
    with psycopg.connect(db.dsn, autocommit=True) as listener:
        listener.execute("listen pg_net_http_post")
        with psycopg.connect(db.dsn) as writer:
            task_id = str(writer.execute("insert into tasks (task_type) values ('comfy') returning task_id").fetchone()[0])
            writer.execute("insert into tasks (task_type, status) values ('comfy', 'cancelled')")  # not queued: no call
            assert select.select([listener.fileno()], [], [], 0.3)[0] == []  # nothing before commit
        notes = list(listener.notifies(timeout=2, stop_after=1))
    [note] = notes
    request = json.loads(note.payload)
    assert request["url"] == "http://127.0.0.1:9/hooks/supabase"
    assert request["headers"]["X-Dispatcher-Secret"] == "s3cret"
    assert request["body"]["task_id"] == task_id and request["body"]["type"] == "INSERT"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(db, "anon", "select * from dispatcher_wakeup")


def test_the_headless_wan2gp_view_shows_tasks_in_production_names(db):
    applied = db.cluster.psql_file(MIGRATIONS_DIR.parent / "compat" / "headless_wan2gp_view.sql", dbname=db.name)
    assert applied.returncode == 0, applied.stderr
    ok, bad = db.insert_task(), db.insert_task("vace")
    rows = {str(r["task_id"]): r for r in claim(db, types=("comfy", "vace"))}
    db.sql("select complete_task(%s, %s, 'j1', 'https://cdn/x.mp4', '{}')", (ok, rows[ok]["lease_token"]))
    db.sql("select fail_task(%s, %s, 'j2', 'CUDA out of memory', false)", (bad, rows[bad]["lease_token"]))
    view = {str(r["id"]): r for r in db.sql("select * from tasks_wan2gp")}
    assert (view[ok]["status"], view[ok]["output_location"], view[ok]["worker_id"]) == ("Complete", "https://cdn/x.mp4", "d1")
    assert (view[bad]["status"], view[bad]["output_location"]) == ("Failed", "CUDA out of memory")
    assert view[ok]["generation_processed_at"] is not None
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(db, "anon", "select * from tasks_wan2gp")
    assert len(_as_role(db, "service_role", "select * from tasks_wan2gp")) == 2
