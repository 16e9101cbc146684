"""Rows made by hand never stall the queue: a malformed row is quarantined (failed, with an
error_message naming what is wrong) and every other row goes on; rows without a lease
expiry are recovered; a queued row at or over max_attempts never runs."""

from __future__ import annotations

import asyncio
import uuid

from supabase_sync.config import Route, RoutingTable
from supabase_sync.store import ClaimedTask, DuePoll, _rows
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.harness import ENDPOINT, make_settings, running, wait_for
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS, ok_worker


def _count(db, where: str) -> int:
    return db.sql(f"select count(*) n from tasks where {where}")[0]["n"]


def test_malformed_in_flight_rows_are_quarantined_and_polling_goes_on_for_everyone(db, emulator):
    no_lease = db.insert_task("comfy", SEED_PARAMS, status="in_progress", runpod_job_id="job-by-hand-1",
                              endpoint_id=ENDPOINT, lease_expires_at="2000-01-01")
    no_endpoint = db.insert_task("comfy", SEED_PARAMS, status="in_progress", runpod_job_id="job-by-hand-2",
                                 lease_token=str(uuid.uuid4()), lease_expires_at="2000-01-01")
    tasks = [db.insert_task("comfy", SEED_PARAMS) for _ in range(20)]
    mystery = db.insert_task("mystery", {})
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    # no webhooks: every result must come through /status polls, the chore the bad rows broke
    settings = make_settings(db, emulator, DISPATCHER_PUBLIC_URL="", WEBHOOK_SECRET="", STATUS_CHECK_INTERVAL="0.3",
                             UNKNOWN_TASK_TYPES="fail")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: all(db.task(t)["status"] == "complete" for t in tasks), timeout_s=30,
                           what="20 tasks complete")
            await wait_for(lambda: db.task(mystery)["status"] == "failed", what="the unknown type failed")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    row = db.task(no_lease)
    assert row["status"] == "failed" and row["completed_at"] is not None
    assert row["error_message"] == ("quarantined, malformed row: in_progress with RunPod job job-by-hand-1 but no "
                                    "lease_token: no result could be written back")
    row = db.task(no_endpoint)
    assert row["status"] == "failed"
    assert "in_progress with RunPod job job-by-hand-2 but no endpoint_id" in row["error_message"]
    assert emulator.requests.get("cancel", 0) == 1  # the job whose endpoint is known is cancelled


def test_in_flight_rows_without_a_lease_expiry_are_recovered_and_free_their_route(db, emulator):
    lost = [db.insert_task("comfy", SEED_PARAMS, status="in_progress", endpoint_id=ENDPOINT, attempts=1,
                           lease_token=str(uuid.uuid4())) for _ in range(5)]  # lease_expires_at NULL
    followed = db.insert_task("comfy", SEED_PARAMS, status="in_progress", endpoint_id=ENDPOINT, attempts=1,
                              lease_token=str(uuid.uuid4()), runpod_job_id="job-runpod-forgot")
    fresh = [db.insert_task("comfy", SEED_PARAMS) for _ in range(3)]
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    # the route's whole in-flight allowance was held by the 5 rows that nobody would ever recover
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"], max_in_flight=5)])
    settings = make_settings(db, emulator, routing=routing, STATUS_CHECK_INTERVAL="60")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: _count(db, "status = 'complete'") == 9, timeout_s=30, what="all 9 complete")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    for task_id in lost:
        row = db.task(task_id)
        assert row["lost_claims"] == 1 and row["attempts"] == 1  # recovered, the attempt given back
    # the row with a job but no expiry was polled at once; RunPod did not know the job: run again
    assert len(emulator.submissions_for(followed)) == 1 and db.task(followed)["attempts"] == 2
    assert all(len(emulator.submissions_for(t)) == 1 for t in fresh)


def test_a_queued_row_at_or_over_max_attempts_never_runs(db, emulator):
    over = db.insert_task("comfy", SEED_PARAMS, attempts=5, max_attempts=3)
    at = db.insert_task("comfy", SEED_PARAMS, attempts=3, max_attempts=3)
    fine = db.insert_task("comfy", SEED_PARAMS, attempts=2, max_attempts=3)
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: db.task(over)["status"] == "failed" and db.task(at)["status"] == "failed",
                           what="quarantined")
            await wait_for(lambda: emulator.submissions_for(fine), what="the good one submitted")
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert emulator.submissions_for(over) == [] and emulator.submissions_for(at) == []
    assert db.task(over)["error_message"] == (
        "quarantined, malformed row: queued with attempts 5, not below max_attempts 3: it would run past its "
        "limit (set attempts lower to run it again)")
    assert db.task(over)["attempts"] == 5  # not claimed: the count is left as it was
    assert db.task(fine)["attempts"] == 3


def test_the_claim_never_takes_a_row_at_max_attempts_even_before_quarantine(db):
    db.insert_task("comfy", SEED_PARAMS, attempts=3, max_attempts=3)
    assert db.sql("select * from claim_tasks('d', 'ep', array['comfy'], 10)") == []


def test_rows_are_validated_one_by_one_and_a_bad_one_is_named_not_fatal():
    good = {"task_id": str(uuid.uuid4()), "task_type": "comfy", "lease_token": str(uuid.uuid4()),
            "endpoint_id": "ep", "runpod_job_id": "j", "attempts": 1, "max_attempts": 3}
    bad_id = str(uuid.uuid4())
    bad = {**good, "task_id": bad_id, "lease_token": None, "endpoint_id": None}
    unreadable = {"nothing": "useful"}
    rows = _rows(DuePoll, [good, bad, unreadable], "take_due_polls")
    assert [str(r.task_id) for r in rows] == [good["task_id"]]
    first, second = rows.malformed
    assert first.task_id == uuid.UUID(bad_id) and first.function == "take_due_polls"
    assert first.problem == ("lease_token: UUID input should be a string, bytes or UUID object; "
                             "endpoint_id: Input should be a valid string")
    assert second.task_id is None and second.problem.startswith("task_id: Field required")
    assert list(_rows(ClaimedTask, None, "claim_tasks")) == []


def test_a_row_the_dispatcher_cannot_read_is_quarantined_by_id(db):
    task_id = db.insert_task("comfy", SEED_PARAMS, status="in_progress")
    assert db.sql("select quarantine_task(%s, 'take_due_polls returned it as: lease_token: none') o",
                  (task_id,))[0]["o"] == "applied"
    row = db.task(task_id)
    assert row["status"] == "failed"
    assert row["error_message"] == "quarantined, malformed row: take_due_polls returned it as: lease_token: none"
    assert db.sql("select quarantine_task(%s, 'x') o", (task_id,))[0]["o"] == "already_final"
    assert db.sql("select quarantine_task(%s, 'x') o", (str(uuid.uuid4()),))[0]["o"] == "not_found"
