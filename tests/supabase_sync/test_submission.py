"""Submissions (supabase_sync/submitter.py): each job id is recorded as soon as its /run
answers, a claim stays alive while its /run is retried, a claim that is gone stops its
retries, and an orphan job is cancelled unless it already ended. Real database, the
PostgREST double, the RunPod emulator."""

from __future__ import annotations

import asyncio
import logging

import httpx

from tests.supabase_sync.harness import ENDPOINT, make_settings, running, wait_for
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.test_dispatch_flow import ok_worker


def _job_ids(db, task_ids):
    return {t: db.task(t)["runpod_job_id"] for t in task_ids}


def test_a_throttled_run_neither_holds_up_its_batch_nor_loses_its_claim(db, emulator, caplog):
    tasks = [db.insert_task("comfy", SEED_PARAMS) for _ in range(10)]
    slow = tasks[4]
    emulator.throttle_task(slow, count=3, retry_after_s=1.0)  # ~3 s of 429s, three times the claim lease
    settings = make_settings(db, emulator, CLAIM_LEASE_S="1", STATUS_CHECK_INTERVAL="60")
    caplog.set_level(logging.INFO, logger="supabase_sync")

    async def scenario() -> None:
        async with running(settings):
            others = [t for t in tasks if t != slow]
            await wait_for(lambda: all(_job_ids(db, others).values()), timeout_s=10, what="the other 9 recorded")
            # recorded as each /run answered: the throttled one is still being tried, and its
            # claim is kept alive past its 1 s lease instead of being requeued
            assert emulator.faults.get("task_429", 0) < 3
            row = db.task(slow)
            assert row["status"] == "in_progress" and row["runpod_job_id"] is None and row["lost_claims"] == 0
            await wait_for(lambda: db.task(slow)["runpod_job_id"], timeout_s=15, what="the throttled one recorded")
            await asyncio.sleep(1.5)  # several more chore rounds: nothing is requeued or resubmitted

    asyncio.run(scenario())
    assert emulator.faults["task_429"] == 3
    for task_id in tasks:
        row = db.task(task_id)
        assert len(emulator.submissions_for(task_id)) == 1, task_id
        assert row["attempts"] == 1 and row["lost_claims"] == 0 and row["status"] == "in_progress"
    messages = [r.getMessage() for r in caplog.records]
    assert not any("expired" in m or "requeued" in m or "claim was lost" in m for m in messages), messages


def test_a_result_that_arrives_before_run_answers_is_kept_and_its_job_not_cancelled(db, emulator, caplog):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    emulator.hold_run_answers()  # the job is made at once, the answer to /run waits
    settings = make_settings(db, emulator, CLAIM_LEASE_S="1", STATUS_CHECK_INTERVAL="60")
    caplog.set_level(logging.INFO, logger="supabase_sync")

    async def scenario() -> str:
        async with running(settings) as base, httpx.AsyncClient() as http:
            [job] = await wait_for(lambda: emulator.submissions_for(task_id), what="the job made")
            assert emulator.take_job(ENDPOINT).id == job.id
            emulator.finish_job(job.id, output={"outputs": [{"url": "https://cdn.test/fast.png"}]})
            await wait_for(lambda: db.task(task_id)["status"] == "complete", what="complete by webhook")
            await asyncio.sleep(1.0)  # lease-keeping rounds see the finished task meanwhile
            emulator.release_run_answers()
            for _ in range(100):
                metrics = (await http.get(f"{base}/metrics")).text
                if 'supabase_sync_outcomes_total{outcome="submitted"} 1' in metrics:
                    return metrics
                await asyncio.sleep(0.05)
            raise AssertionError(f"the /run answer was never recorded:\n{metrics}")

    metrics = asyncio.run(scenario())
    assert "orphan" not in metrics
    row = db.task(task_id)
    assert row["status"] == "complete" and row["output_url"] == "https://cdn.test/fast.png"
    assert emulator.requests.get("cancel", 0) == 0  # no /cancel of the finished job
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def test_a_claim_cancelled_while_its_run_is_retried_stops_the_retries(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    emulator.throttle_task(task_id, count=4, retry_after_s=1.0)
    settings = make_settings(db, emulator, CLAIM_LEASE_S="1", STATUS_CHECK_INTERVAL="60")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: emulator.faults.get("task_429", 0) >= 1, what="the first 429")
            db.sql("select cancel_task(%s, 'user cancelled')", (task_id,))
            await asyncio.sleep(4.5)  # the remaining 429s would have ended by now

    asyncio.run(scenario())
    assert emulator.faults["task_429"] < 4  # it stopped trying
    assert emulator.submissions_for(task_id) == []
    row = db.task(task_id)
    assert row["status"] == "cancelled" and row["error_message"] == "user cancelled"


def test_an_orphan_job_is_cancelled_when_its_claim_was_taken_over_before_it_was_recorded(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    emulator.hold_run_answers()
    settings = make_settings(db, emulator, CLAIM_LEASE_S="30", STATUS_CHECK_INTERVAL="60", POLL_INTERVAL="30")

    async def scenario() -> None:
        async with running(settings):
            [job] = await wait_for(lambda: emulator.submissions_for(task_id), what="the job made")
            # meanwhile the claim is lost: an operator (or another dispatcher) requeued the task
            db.sql("update tasks set status = 'queued', lease_token = null, lease_expires_at = null, "
                   "run_after = '2999-01-01' where task_id = %s", (task_id,))
            emulator.release_run_answers()
            await wait_for(lambda: emulator.jobs[job.id].status == "CANCELLED", what="the orphan cancelled")

    asyncio.run(scenario())
    assert db.task(task_id)["status"] == "queued" and db.task(task_id)["runpod_job_id"] is None


def test_a_burst_is_submitted_once_each_while_one_route_is_throttled(db, emulator):
    """A throttled endpoint backs up its own submissions only: the other route goes on."""
    slow = [db.insert_task("comfy", SEED_PARAMS) for _ in range(3)]
    fast = [db.insert_task("vace", {"prompt": str(n)}) for n in range(20)]
    for task_id in slow:
        emulator.throttle_task(task_id, count=2, retry_after_s=1.0)
    worker = ScriptedWorker(emulator, "ep-wan", ok_worker).start()
    settings = make_settings(db, emulator, routes="comfy=ep-comfy;vace=ep-wan", CLAIM_LEASE_S="1")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: all(db.task(t)["status"] == "complete" for t in fast), timeout_s=20,
                           what="the other route's tasks complete")
            assert any(db.task(t)["runpod_job_id"] is None for t in slow)  # still being tried
            await wait_for(lambda: all(db.task(t)["runpod_job_id"] for t in slow), timeout_s=15, what="slow recorded")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    for task_id in slow + fast:
        assert len(emulator.submissions_for(task_id)) == 1
        assert db.task(task_id)["attempts"] == 1
