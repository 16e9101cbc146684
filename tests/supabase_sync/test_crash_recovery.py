"""`python -m supabase_sync` SIGKILLed at the three dangerous moments, and two dispatchers
racing: every task finishes, none is submitted to RunPod twice."""

from __future__ import annotations

import json
from pathlib import Path

from tests.comfy_env import free_port
from tests.supabase_sync.harness import ENDPOINT, DispatcherProcess, dispatcher_env, wait_for_sync
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS

OUTPUT = {"outputs": [{"url": "https://cdn.test/out.png"}]}


def _process(db, emulator, tmp_path: Path, port: int, name: str, **extra: str) -> DispatcherProcess:
    env = dispatcher_env(db, emulator, port, **{"CLAIM_LEASE_S": "1", "DISPATCHER_ID": name, **extra})
    return DispatcherProcess(env, tmp_path / f"{name}.log").start()


def test_killed_after_claim_before_submit_the_task_is_claimed_again_and_submitted_once(db, emulator, tmp_path):
    emulator.hold_runs()  # /run stays unanswered: the task is claimed, RunPod has no job
    port = free_port()
    first = _process(db, emulator, tmp_path, port, "d-first")
    task_id = db.insert_task("comfy", SEED_PARAMS)
    try:
        wait_for_sync(lambda: emulator.held_runs() == 1, what="a /run in flight")
        assert db.task(task_id)["status"] == "in_progress" and db.task(task_id)["runpod_job_id"] is None
        first.kill()
    finally:
        first.kill()
        emulator.release_runs(drop=True)  # the killed dispatcher's request never made a job
    assert emulator.submissions == []
    second = _process(db, emulator, tmp_path, port, "d-second")
    try:
        job_id = wait_for_sync(lambda: db.task(task_id)["runpod_job_id"], what="resubmitted after the lease expired")
        emulator.take_job(ENDPOINT)
        emulator.finish_job(job_id, output=OUTPUT)
        wait_for_sync(lambda: db.task(task_id)["status"] == "complete", what="complete")
    finally:
        second.terminate()
    assert len(emulator.submissions_for(task_id)) == 1
    row = db.task(task_id)
    assert row["claimed_by"] == "d-second" and row["output_url"] == "https://cdn.test/out.png"
    # the killed dispatcher's claim did not spend the task's attempts: it counts as a lost claim
    assert row["attempts"] == 1 and row["lost_claims"] == 1


def test_killed_after_submit_the_restarted_dispatcher_follows_the_job_instead_of_resubmitting(db, emulator, tmp_path):
    port = free_port()
    first = _process(db, emulator, tmp_path, port, "d-first", STATUS_CHECK_INTERVAL="60")
    task_id = db.insert_task("comfy", SEED_PARAMS)
    try:
        job_id = wait_for_sync(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
    finally:
        first.kill()
    # restarted at the same address (the webhook URL RunPod holds), well after the claim lease
    second = _process(db, emulator, tmp_path, port, "d-second", STATUS_CHECK_INTERVAL="60")
    try:
        import time

        time.sleep(1.5)
        assert db.task(task_id)["status"] == "in_progress"
        emulator.take_job(ENDPOINT)
        emulator.finish_job(job_id, output=OUTPUT)
        wait_for_sync(lambda: db.task(task_id)["status"] == "complete", what="complete by webhook")
    finally:
        second.terminate()
    assert len(emulator.submissions_for(task_id)) == 1
    assert [d.status_code for d in emulator.webhook_deliveries if d.job_id == job_id] == [200]


def test_killed_before_the_write_back_of_a_finished_job_the_restart_finds_the_result(db, emulator, tmp_path):
    port = free_port()
    first = _process(db, emulator, tmp_path, port, "d-first", STATUS_CHECK_INTERVAL="1")
    task_id = db.insert_task("comfy", SEED_PARAMS)
    try:
        job_id = wait_for_sync(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
    finally:
        first.kill()
    emulator.take_job(ENDPOINT)
    emulator.finish_job(job_id, output=OUTPUT)  # its webhook finds nobody listening, 3 times
    wait_for_sync(lambda: len([d for d in emulator.webhook_deliveries if d.job_id == job_id]) == 3, what="webhook retries")
    assert all(d.status_code is None for d in emulator.webhook_deliveries if d.job_id == job_id)
    assert db.task(task_id)["status"] == "in_progress"
    second = _process(db, emulator, tmp_path, free_port(), "d-second", STATUS_CHECK_INTERVAL="1")
    try:
        wait_for_sync(lambda: db.task(task_id)["status"] == "complete", what="complete from /status")
    finally:
        second.terminate()
    assert len(emulator.submissions_for(task_id)) == 1
    assert db.task(task_id)["output_url"] == "https://cdn.test/out.png"


def test_two_dispatchers_racing_over_500_tasks_submit_each_exactly_once(db, emulator, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": [{"endpoint_id": ENDPOINT, "task_types": ["comfy"], "max_in_flight": 1000}]}))
    extra = {"DISPATCHER_ROUTES": "", "DISPATCHER_ROUTES_FILE": str(routes), "CLAIM_LEASE_S": "30"}
    one = _process(db, emulator, tmp_path, free_port(), "d-one", **extra)
    two = _process(db, emulator, tmp_path, free_port(), "d-two", **extra)
    try:
        db.sql("insert into tasks (task_type, params) select 'comfy', %s from generate_series(1, 500)",
               (json.dumps(SEED_PARAMS),))
        wait_for_sync(lambda: db.sql("select count(*) n from tasks where runpod_job_id is not null")[0]["n"] == 500,
                      timeout_s=60, what="500 submitted")
    finally:
        assert one.terminate() == 0
        assert two.terminate() == 0
    task_ids = [str(r["task_id"]) for r in db.sql("select task_id from tasks")]
    submitted = [job.input["task_id"] for job in emulator.submissions]
    assert len(submitted) == 500 and sorted(submitted) == sorted(task_ids)
    by = {r["claimed_by"]: r["n"] for r in db.sql("select claimed_by, count(*) n from tasks group by 1")}
    assert set(by) == {"d-one", "d-two"}, by  # both really took part
    jobs = {r["task_id"]: r["runpod_job_id"] for r in db.sql("select task_id, runpod_job_id from tasks")}
    assert all(emulator.jobs[job_id].input["task_id"] == str(task) for task, job_id in jobs.items())
