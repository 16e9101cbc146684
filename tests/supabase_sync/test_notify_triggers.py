"""0060_notify_listeners.sql on a real PostgreSQL: NOTIFY on insert and on cancel, only when committed."""

from __future__ import annotations

import json
import select

import psycopg

from tests.supabase_sync.test_schema import claim


def _listener(db):
    conn = psycopg.connect(db.dsn, autocommit=True)
    conn.execute("listen supabase_sync")
    return conn


def _notes(conn, expected: int) -> list:
    """The next `expected` notifications (waiting up to 5 s), then any more that come within 0.2 s."""
    notes = [json.loads(n.payload) for n in conn.notifies(timeout=5, stop_after=expected)] if expected else []
    return notes + [json.loads(n.payload) for n in conn.notifies(timeout=0.2)]


def test_an_insert_notifies_when_it_commits_and_never_when_it_rolls_back(db):
    with _listener(db) as listener:
        with psycopg.connect(db.dsn) as writer:
            writer.execute("insert into tasks (task_type) values ('comfy')")
            assert select.select([listener.fileno()], [], [], 0.3)[0] == []  # nothing before commit
            writer.commit()
            assert _notes(listener, 1) == [{"event": "insert", "task_type": "comfy"}]
            writer.execute("insert into tasks (task_type) values ('vace')")
            writer.rollback()
        assert _notes(listener, 0) == []


def test_a_many_row_insert_notifies_once_per_task_type_and_only_for_queued_rows(db):
    with _listener(db) as listener:
        db.sql("insert into tasks (task_type) select case when i % 2 = 0 then 'comfy' else 'vace' end "
               "from generate_series(1, 500) i")
        db.sql("insert into tasks (task_type, status) values ('comfy', 'complete'), ('flux', 'cancelled')")
        notes = _notes(listener, 2)
    assert sorted(n["task_type"] for n in notes) == ["comfy", "vace"]


def test_the_seeds_insert_notifies_too(db):
    from tests.supabase_sync.test_schema import SEED_INSERT

    with _listener(db) as listener:
        db.sql(SEED_INSERT)
        assert _notes(listener, 1) == [{"event": "insert", "task_type": "comfy"}]


def test_cancelling_a_task_with_a_runpod_job_notifies_and_makes_its_cancel_due_at_once(db):
    by_function, by_update, not_submitted = db.insert_task(), db.insert_task(), db.insert_task()
    rows = {str(r["task_id"]): r for r in claim(db)}
    jobs = [{"task_id": t, "lease_token": str(rows[t]["lease_token"]), "runpod_job_id": f"job-{i}"}
            for i, t in enumerate((by_function, by_update))]
    db.sql("select * from attach_runpod_jobs(%s, 30)", (json.dumps(jobs),))
    assert db.task(by_update)["lease_expires_at"] is not None  # its next status check, 30 s away
    with _listener(db) as listener:
        db.sql("select cancel_task(%s, 'user cancelled')", (by_function,))
        db.sql("update tasks set status = 'cancelled' where task_id = %s", (by_update,))  # the documented plain UPDATE
        db.sql("update tasks set status = 'cancelled' where task_id = %s", (not_submitted,))  # no RunPod job yet
        db.sql("update tasks set status = 'cancelled', error_message = 'again' where task_id = %s", (by_update,))
        notes = _notes(listener, 2)
    assert notes == [{"event": "cancel", "task_id": by_function}, {"event": "cancel", "task_id": by_update}]
    assert db.task(by_update)["lease_expires_at"] is None
    pending = db.sql("select * from take_pending_cancels(10, 30)")
    assert sorted(p["runpod_job_id"] for p in pending) == ["job-0", "job-1"]  # both due now, not in 30 s


def test_the_triggers_fire_for_the_service_role_and_their_functions_are_nobody_elses_to_call(db):
    with _listener(db) as listener:
        with psycopg.connect(db.dsn) as conn:
            conn.execute("set role service_role")
            conn.execute("insert into tasks (task_type) values ('comfy')")
        assert _notes(listener, 1) == [{"event": "insert", "task_type": "comfy"}]
    for role in ("anon", "authenticated", "service_role"):
        with psycopg.connect(db.dsn) as conn:
            conn.execute(f"set role {role}")
            try:
                conn.execute("select supabase_sync.task_cancelled()")
                raise AssertionError(f"{role} could call the trigger function")
            except psycopg.errors.InsufficientPrivilege:
                pass


def test_a_waiting_task_released_by_its_dependency_notifies_once_per_type(db):
    first = db.insert_task("comfy")
    waiting = [db.insert_task("vace", depends_on=[first]) for _ in range(3)]
    assert {db.task(t)["status"] for t in waiting} == {"waiting"}
    [c] = claim(db)
    with _listener(db) as listener:
        db.sql("select complete_task(%s, %s, null, 'https://cdn.test/a.png', '{}')", (first, c["lease_token"]))
        notes = _notes(listener, 1)
    assert notes == [{"event": "queued", "task_type": "vace"}]
    assert {db.task(t)["status"] for t in waiting} == {"queued"}
