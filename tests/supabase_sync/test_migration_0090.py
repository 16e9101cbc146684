"""Migrations 0090/0091 on a live database: they apply over the previous release's schema
(0001-0081, LISTEN and pipelines included) and rows, can be run again, leave no overloaded
function (PostgREST would answer 300), and every call the previous dispatcher release makes
still resolves and still fits its models."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid

import psycopg
from psycopg.rows import dict_row
from supabase import acreate_client

from supabase_sync.migrations import MIGRATIONS_DIR, discover, select
from supabase_sync.migrations.runner import migrate

HARDENING = ("0090_dispatcher_hardening.sql", "0091_dispatcher_indexes.sql")

# Every RPC the previous release's dispatcher (supabase_sync/store.py before 0090) makes,
# with its argument names, and the columns its models require of each row.
PREVIOUS_CALLS = [
    ("claim_tasks", {"p_dispatcher": "old", "p_endpoint_id": "ep", "p_task_types": ["comfy"], "p_limit": 5,
                     "p_max_in_flight": 10, "p_lease_s": 60},
     {"task_id", "task_type", "params", "attempts", "max_attempts", "lease_token", "created_at"}),
    ("attach_runpod_jobs", {"p_jobs": [], "p_recheck_s": 30}, {"task_id", "outcome"}),
    ("record_progress", {"p_task_id": str(uuid.uuid4()), "p_lease_token": str(uuid.uuid4()), "p_progress": {}}, None),
    ("complete_task", {"p_task_id": str(uuid.uuid4()), "p_lease_token": str(uuid.uuid4()), "p_runpod_job_id": "j",
                       "p_output_url": None, "p_result": None}, None),
    ("fail_task", {"p_task_id": str(uuid.uuid4()), "p_lease_token": str(uuid.uuid4()), "p_runpod_job_id": None,
                   "p_error": "e", "p_retryable": True, "p_backoff_base_s": 10, "p_backoff_max_s": 600}, None),
    ("release_task", {"p_task_id": str(uuid.uuid4()), "p_lease_token": str(uuid.uuid4()), "p_delay_s": 0,
                      "p_reason": "r"}, None),
    ("requeue_expired_leases", {"p_limit": 1000}, {"task_id", "outcome"}),
    ("take_due_polls", {"p_dispatcher": "old", "p_limit": 200, "p_recheck_s": 30},
     {"task_id", "task_type", "lease_token", "endpoint_id", "runpod_job_id", "attempts", "max_attempts"}),
    ("cancel_task", {"p_task_id": str(uuid.uuid4()), "p_reason": "r"}, None),
    ("take_pending_cancels", {"p_limit": 100, "p_retry_s": 30}, {"task_id", "endpoint_id", "runpod_job_id"}),
    ("mark_runpod_cancelled", {"p_task_id": str(uuid.uuid4())}, None),
    ("fail_unroutable", {"p_known_types": ["comfy"], "p_limit": 100}, {"task_id", "task_type"}),
    ("heartbeat", {"p_worker_id": "old", "p_status": "active", "p_current_task_id": None, "p_metadata": None}, None),
    ("queue_stats", {}, {"task_type", "status", "tasks", "oldest_created_at"}),
    ("dependency_outputs", {"p_refs": []}, {"task_id", "from_task", "declared", "status", "output_url", "outputs"}),
    ("get_workflow_templates", {"p_refs": ["none"]}, None),
    ("list_workflow_templates", {}, None),
    ("record_resolved_templates", {"p_items": []}, None),
]


def _overloaded(dsn: str) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        # our functions only: pgcrypto's (an extension in public) overload on purpose
        return conn.execute("select proname, count(*) n from pg_proc p where pronamespace = 'public'::regnamespace "
                            "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e') "
                            "group by proname having count(*) > 1").fetchall()


def test_no_function_name_has_two_signatures(db):
    assert _overloaded(db.dsn) == []  # PostgREST answers 300 PGRST203 for those


def test_every_call_of_the_previous_release_still_resolves_and_fits_its_models(db):
    db.insert_task("comfy", {})
    db.insert_task("comfy", {}, status="in_progress", runpod_job_id="j", endpoint_id="ep",
                   lease_token=str(uuid.uuid4()), lease_expires_at="2000-01-01")
    db.insert_task("comfy", {}, status="in_progress", endpoint_id="ep", lease_token=str(uuid.uuid4()),
                   lease_expires_at="2000-01-01")

    async def calls() -> None:
        client = await acreate_client(db.url, db.service_key)
        for fn, args, columns in PREVIOUS_CALLS:
            data = (await client.rpc(fn, args).execute()).data  # an APIError (300, 404) would raise here
            if columns is not None:
                assert isinstance(data, list), (fn, data)
                for row in data:
                    assert columns <= set(row), (fn, row)

    asyncio.run(calls())


def test_0090_applies_over_the_previous_releases_live_rows_and_can_run_again(pg_cluster, tmp_path):
    name = f"upgrade_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name, with_migrations=False)
    previous = tmp_path / "previous"  # the migrations the previous release shipped
    previous.mkdir()
    for m in select(discover()):
        if m.version < "0090":
            shutil.copy(m.path, previous / m.name)
    try:
        migrate(dsn, directory=previous, report=lambda line: None)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("insert into tasks (task_type) select 'comfy' from generate_series(1, 3)")
            blocker = conn.execute("insert into tasks (task_type) values ('other') returning task_id").fetchone()["task_id"]
            waiting = conn.execute("insert into tasks (task_type, depends_on) values ('comfy', %s) returning task_id",
                                   ([blocker],)).fetchone()["task_id"]
            claimed = conn.execute("select * from claim_tasks('old', 'ep', array['comfy'], 2)").fetchall()
            follow, submitting = claimed
            conn.execute("select * from attach_runpod_jobs(%s)", (json.dumps(
                [{"task_id": str(follow["task_id"]), "lease_token": str(follow["lease_token"]),
                  "runpod_job_id": "job-old"}]),))
        lines: list[str] = []
        result = migrate(dsn, report=lines.append)  # what an operator runs: the rest, recorded
        applied = [m.name for m in result.applied]
        assert applied[:len(HARDENING)] == list(HARDENING), lines  # (then the later releases' migrations, if any)
        assert any("0091_dispatcher_indexes.sql (pre, statement by statement" in line for line in lines), lines
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            row = conn.execute("select lost_claims, max_lost_claims, worker_started_at from tasks limit 1").fetchone()
            assert row == {"lost_claims": 0, "max_lost_claims": 10, "worker_started_at": None}
            # the claims made before the upgrade go on under the new functions
            [start] = conn.execute("select * from start_task(%s, %s, 'job-new')",
                                   (submitting["task_id"], submitting["lease_token"])).fetchall()
            assert start["outcome"] == "started"
            assert conn.execute("select complete_task(%s, %s, 'job-old', 'u', '{}') o",
                                (follow["task_id"], follow["lease_token"])).fetchone()["o"] == "applied"
            assert len(conn.execute("select * from claim_tasks('new', 'ep', array['comfy'], 5)").fetchall()) == 1
            # 0080's pipelines go on: the waiting task is counted apart and cancelled like the others
            stats = {(r["task_type"], r["status"]): r["tasks"] for r in conn.execute("select * from queue_stats()")}
            assert stats == {("comfy", "waiting"): 1, ("comfy", "in_progress"): 2, ("other", "queued"): 1}, stats
            conn.execute("update tasks set status = 'cancelled' where task_id = %s", (waiting,))
            row = conn.execute("select error_message, completed_at from tasks where task_id = %s", (waiting,)).fetchone()
            assert row["error_message"] == "cancelled" and row["completed_at"] is not None
            invalid = conn.execute("select count(*) n from pg_index where not indisvalid").fetchone()["n"]
            assert invalid == 0  # every index built CONCURRENTLY is valid
            assert conn.execute("select convalidated from pg_constraint where conname = 'tasks_lost_claims_check'"
                                ).fetchone()["convalidated"]
        for file in HARDENING:  # as psql users apply them, again
            again = pg_cluster.psql_file(MIGRATIONS_DIR / file, dbname=name)
            assert again.returncode == 0, again.stderr
        assert _overloaded(dsn) == []
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def test_a_plain_update_to_cancelled_gets_cancel_tasks_bookkeeping(db):
    task_id = db.insert_task("comfy", {}, status="in_progress", endpoint_id="ep", runpod_job_id="job-1",
                             lease_token=str(uuid.uuid4()), lease_expires_at="2999-01-01",
                             error_message="RunPod /run unavailable, will retry")
    db.sql("update tasks set status = 'cancelled' where task_id = %s", (task_id,))
    row = db.task(task_id)
    assert row["lease_expires_at"] is None and row["completed_at"] is not None
    assert row["error_message"] == "cancelled"  # not the stale message of an earlier attempt
    # picked up by the very next cancel round, not when the old lease (the next status check) ends
    assert [str(r["task_id"]) for r in db.sql("select * from take_pending_cancels(10, 30)")] == [task_id]
    own = db.insert_task("comfy", {})
    db.sql("update tasks set status = 'cancelled', error_message = 'customer asked' where task_id = %s", (own,))
    assert db.task(own)["error_message"] == "customer asked"


def test_a_finished_task_updated_to_cancelled_gets_no_cancel_bookkeeping_and_no_notification(db):
    task_id = db.insert_task("comfy", {}, status="complete", endpoint_id="ep", runpod_job_id="job-1",
                             completed_at="2000-01-01")
    with psycopg.connect(db.dsn, autocommit=True) as listener:
        listener.execute("listen supabase_sync")
        db.sql("update tasks set status = 'cancelled' where task_id = %s", (task_id,))
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
    row = db.task(task_id)
    assert heard == [] and row["error_message"] is None and row["completed_at"].year == 2000
