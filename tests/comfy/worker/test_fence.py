"""The start fence (comfy/worker/fence.py): only the job holding its task's current claim
runs; any other returns at once with error_type `superseded`, having touched nothing.
Real database (start_task), the real supabase client, the PostgREST double; the last test
runs the real handler with its CPU ComfyUI."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from comfy.worker.fence import TaskFence
from comfy.worker.supabase_rpc import SupabaseRpc
from tests.conftest import empty_image_graph, unique_color


def _claimed(db, task_type: str = "comfy") -> tuple[str, str]:
    task_id = db.insert_task(task_type, {})
    [row] = db.sql("select * from claim_tasks('d1', 'ep', %s, 1)", ([task_type],))
    return task_id, str(row["lease_token"])


def _fence(db, **kwargs) -> TaskFence:
    return TaskFence(SupabaseRpc(db.url, db.service_key), **kwargs)


def test_the_job_of_the_current_claim_starts_and_its_id_is_recorded_at_once(db):
    task_id, lease = _claimed(db)
    fence = _fence(db)
    assert fence.check({"task_id": task_id, "lease_token": lease, "workflow": {}}, "job-a") is None
    row = db.task(task_id)
    assert row["runpod_job_id"] == "job-a" and row["worker_started_at"] is not None
    assert fence.checks == 1 and fence.refused == 0
    # RunPod delivering the same job again: still that job's claim
    assert fence.check({"task_id": task_id, "lease_token": lease}, "job-a") is None
    # /run's own answer arriving later is no conflict either
    attach = db.sql("select * from attach_runpod_jobs(%s)",
                    (json.dumps([{"task_id": task_id, "lease_token": lease, "runpod_job_id": "job-a"}]),))
    assert attach[0]["outcome"] == "applied"


def test_a_second_job_of_the_same_claim_is_superseded_and_names_the_first(db):
    task_id, lease = _claimed(db)
    fence = _fence(db)
    assert fence.check({"task_id": task_id, "lease_token": lease}, "job-a") is None
    refused = fence.check({"task_id": task_id, "lease_token": lease}, "job-b")
    assert refused["error_type"] == "superseded"
    assert refused["error"] == f"job job-b no longer holds task {task_id}: RunPod job job-a holds the claim; nothing was run"
    assert refused["details"] == {"task_id": task_id, "runpod_job_id": "job-b", "outcome": "superseded",
                                  "reason": "RunPod job job-a holds the claim"}
    assert db.task(task_id)["runpod_job_id"] == "job-a"


def test_a_job_of_an_older_claim_or_a_finished_task_is_superseded(db):
    task_id, old_lease = _claimed(db)
    db.sql("select release_task(%s, %s, 0, 'x')", (task_id, old_lease))
    [again] = db.sql("select * from claim_tasks('d2', 'ep', array['comfy'], 1)")
    fence = _fence(db)
    refused = fence.check({"task_id": task_id, "lease_token": old_lease}, "job-old")
    assert "the task was claimed again; a newer claim holds it" in refused["error"]
    db.sql("select cancel_task(%s)", (task_id,))
    refused = fence.check({"task_id": task_id, "lease_token": str(again["lease_token"])}, "job-new")
    assert refused["details"]["reason"] == "the task is cancelled"
    missing = str(uuid.uuid4())
    refused = fence.check({"task_id": missing, "lease_token": old_lease}, "job-x")
    assert refused["details"]["outcome"] == "not_found" and refused["error_type"] == "superseded"
    assert fence.refused == 3


def test_jobs_that_name_no_claim_and_workers_without_credentials_are_not_fenced(db):
    fence = _fence(db)
    assert fence.check({"workflow": {}}, "job-1") is None
    assert fence.check({"task_id": str(uuid.uuid4())}, "job-2") is None  # no lease token: not the dispatcher's
    assert fence.check({"task_id": "task-77", "lease_token": "abc"}, "job-3") is None  # not UUIDs
    assert fence.check("not a dict", "job-4") is None
    assert fence.checks == 0
    claim = {"task_id": str(uuid.uuid4()), "lease_token": str(uuid.uuid4())}
    assert not any(fence.applies_to(i) for i in ({"workflow": {}}, {"task_id": "task-77", "lease_token": "abc"}, "x"))
    assert fence.applies_to(claim)  # the handler asks (in a thread) only for these
    off = TaskFence.from_env({})
    assert not off.enabled and off.check(claim, "j") is None
    assert not off.applies_to(claim)


def test_an_outage_is_waited_out_and_an_unreachable_supabase_lets_the_job_run(db):
    task_id, lease = _claimed(db)
    db.postgrest.outage(1.0)  # PostgREST answers 503 meanwhile
    fence = _fence(db, timeout_s=20)
    assert fence.check({"task_id": task_id, "lease_token": lease}, "job-a") is None
    assert fence.checks == 1 and fence.unchecked == 0 and db.task(task_id)["runpod_job_id"] == "job-a"
    nowhere = TaskFence(SupabaseRpc("http://127.0.0.1:9", db.service_key), timeout_s=0.5)
    assert nowhere.check({"task_id": task_id, "lease_token": lease}, "job-b") is None
    assert nowhere.unchecked == 1 and nowhere.checks == 0


def test_a_database_without_start_task_lets_jobs_run(db):
    task_id, lease = _claimed(db)
    db.sql("drop function start_task(uuid, uuid, text, double precision)")
    db.postgrest.reload_schema()
    fence = _fence(db)
    assert fence.check({"task_id": task_id, "lease_token": lease}, "job-a") is None
    assert fence.unchecked == 1


@pytest.mark.comfy
def test_the_handler_returns_a_superseded_job_at_once_without_queueing_anything(worker, db, monkeypatch):
    task_id, lease = _claimed(db)
    fence = _fence(db)
    assert fence.check({"task_id": task_id, "lease_token": lease}, "job-first") is None
    monkeypatch.setattr(worker, "FENCE", fence)
    history_before = httpx.get(f"{worker.RUNTIME.client.base_url}/history").json()
    job_input = {"task_id": task_id, "lease_token": lease, "workflow": empty_image_graph(color=unique_color()),
                 "inputs": [{"node": "1", "field": "width", "url": "http://127.0.0.1:9/never-fetched.png"}]}
    result = asyncio.run(worker.handler({"id": "job-second", "input": job_input}))
    assert result["error_type"] == "superseded"
    assert "RunPod job job-first holds the claim" in result["error"]
    assert httpx.get(f"{worker.RUNTIME.client.base_url}/history").json().keys() == history_before.keys()
    assert worker.RUNTIME.client.queue() == {"queue_running": [], "queue_pending": []}
    # the job holding the claim runs normally through the same handler
    result = asyncio.run(worker.handler({"id": "job-first", "input": {
        "task_id": task_id, "lease_token": lease, "workflow": empty_image_graph(color=unique_color())}}))
    assert "error" not in result, result
    assert len(result["images"]) == 1
