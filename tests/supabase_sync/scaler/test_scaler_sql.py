"""0050_scaler.sql on a real PostgreSQL: the queue counts, the decision record, the grants."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest
from postgrest.exceptions import APIError
from supabase import acreate_client


def counts(db, endpoint_id="EPA", task_types=("comfy",), backlog_types=()):
    return db.sql("select * from scaler_queue_counts(%s, %s, %s)", (endpoint_id, list(task_types), list(backlog_types)))[0]


def test_queue_counts_split_ready_backoff_and_in_progress_by_endpoint(db):
    db.insert_task("comfy")
    db.insert_task("comfy")
    db.insert_task("comfy", run_after="2999-01-01T00:00:00Z")  # waiting out a retry backoff
    db.insert_task("vace")  # another endpoint's type
    db.insert_task("comfy", status="complete")
    db.insert_task("comfy", status="in_progress", endpoint_id="EPA")
    db.insert_task("comfy", status="in_progress", endpoint_id="EPOLD")  # sent before a routing change
    assert counts(db) == {"queued_ready": 2, "queued_waiting": 1, "in_progress": 1, "backlog_queued": 0, "backlog_in_progress": 0}
    assert counts(db, "EPB", ("vace", "flux")) == {"queued_ready": 1, "queued_waiting": 0, "in_progress": 0, "backlog_queued": 0, "backlog_in_progress": 0}
    assert counts(db, "EPX", ()) == {"queued_ready": 0, "queued_waiting": 0, "in_progress": 0, "backlog_queued": 0, "backlog_in_progress": 0}


def test_backlog_types_are_counted_apart(db):
    db.insert_task("comfy")
    db.insert_task("t2v")
    db.insert_task("t2v")
    db.insert_task("t2v", status="in_progress", endpoint_id="EPA")
    db.insert_task("comfy", status="in_progress", endpoint_id="EPA")
    assert counts(db, "EPA", ("comfy",), ("t2v",)) == {
        "queued_ready": 1, "queued_waiting": 0, "in_progress": 1, "backlog_queued": 2, "backlog_in_progress": 1}


def test_recording_decisions_keeps_the_latest_and_counts_changes_and_failures(db):
    def record(decision):
        db.sql("select record_scaler_decision('EPA', %s::jsonb)", (json.dumps(decision),))

    record({"outcome": "applied", "queued": 3, "target_min": 3, "target_max": 5, "applied_min": 3, "applied_max": 5})
    record({"outcome": "apply_failed", "error": "HTTP 429", "queued": 9, "target_min": 5, "target_max": 5,
            "applied_min": 3, "applied_max": 5})
    record({"outcome": "observe_failed", "error": "down"})  # no inputs: the last ones are kept
    [row] = db.sql("select * from scaler_decisions()")
    assert row["outcome"] == "observe_failed" and row["error"] == "down"
    assert (row["queued"], row["target_min"], row["applied_min"]) == (9, 5, 3)
    assert (row["changes_total"], row["failures_total"]) == (1, 2)


def _as_role(db, role, query):
    with psycopg.connect(db.dsn) as conn:
        conn.execute(f"set role {role}")
        return conn.execute(query).fetchall()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_call_the_scaler_functions_or_read_its_table(db, role):
    for query in ("select * from scaler_queue_counts('EPA', array['comfy'])",
                  "select record_scaler_decision('EPA', '{\"outcome\": \"applied\"}')",
                  "select * from scaler_decisions()", "select * from scaler_decisions"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _as_role(db, role, query)
    assert _as_role(db, "service_role", "select queued_ready from scaler_queue_counts('EPA', array['comfy'])") == [(0,)]


def test_through_the_api_only_the_service_role_key_may_read_the_queue_counts(db):
    async def call(key):
        client = await acreate_client(db.url, key)
        return await client.rpc("scaler_queue_counts", {"p_endpoint_id": "EPA", "p_task_types": ["comfy"]}).execute()

    db.insert_task("comfy")
    for key in (db.anon_key, db.authenticated_key):
        with pytest.raises(APIError) as info:
            asyncio.run(call(key))
        assert info.value.code == "42501"
    assert asyncio.run(call(db.service_key)).data == [{"queued_ready": 1, "queued_waiting": 0, "in_progress": 0, "backlog_queued": 0, "backlog_in_progress": 0}]
