"""A database of the previous release, with tasks in every state, upgraded by `migrate`: every row
intact, the seed's SQL still runs, the new dispatcher finishes what was in flight, and the schema
is the one a new database gets."""

from __future__ import annotations

import asyncio
import json
import zipfile
from typing import Any

import httpx

from supabase_sync.migrations import MIGRATIONS_DIR, discover, select
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.fixtures.pgcluster import PG_NET_STUB_SQL
from tests.supabase_sync.harness import ENDPOINT, make_settings, running, wait_for
from tests.supabase_sync.migrations.conftest import PREVIOUS_RELEASE, migrate_cli, schema_dump
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS, ok_worker
from tests.supabase_sync.test_schema import SEED_INSERT, SEED_OUTPUT_QUERY, SEED_TASKS_QUERY, SEED_WORKERS_QUERY


def test_every_migration_file_of_the_previous_release_is_unchanged_in_this_one():
    with zipfile.ZipFile(PREVIOUS_RELEASE) as archive:
        shipped = {name.rsplit("/", 1)[1]: archive.read(name) for name in archive.namelist()
                   if name.startswith("supabase_sync/sql/migrations/") and name.endswith(".sql")}
    assert sorted(shipped) == ["0001_schema.sql", "0002_functions.sql", "0003_trigger_pg_net.sql", "0050_scaler.sql"]
    changed = [name for name, data in shipped.items() if (MIGRATIONS_DIR / name).read_bytes() != data]
    assert changed == [], "released migrations are append-only: put the change in a new file"


def _claim(db, lease_s: float = 60) -> dict[str, Any]:
    [row] = db.sql("select * from claim_tasks('dispatcher-old', %s, array['comfy'], 1, null, %s)", (ENDPOINT, lease_s))
    return row


def _runpod_job(emulator, task_id: str) -> str:
    """A job on RunPod for the task, as the old dispatcher's /run made it, taken by a worker at once."""
    answer = httpx.post(f"{emulator.api_base_url}/{ENDPOINT}/run", json={"input": {"task_id": task_id}},
                        headers={"Authorization": f"Bearer {emulator.api_key}"})
    job_id = answer.json()["id"]
    assert emulator.take_job(ENDPOINT, "old-worker").id == job_id
    return job_id


def _attach(db, task_id: str, lease: Any, job_id: str, recheck_s: float = 0) -> None:
    jobs = json.dumps([{"task_id": task_id, "lease_token": str(lease), "runpod_job_id": job_id}])
    assert db.sql("select * from attach_runpod_jobs(%s, %s)", (jobs, recheck_s))[0]["outcome"] == "applied"


def _fill(db, emulator) -> dict[str, str]:
    """Tasks in every state, made the way the previous release's dispatcher made them (its SQL functions)."""
    tasks: dict[str, str] = {}
    # finished ones: complete, failed for good, failed after its retries
    for name in ("complete", "failed", "gave_up"):
        tasks[name] = db.insert_task("comfy", SEED_PARAMS, max_attempts=1)
        claimed = _claim(db)
        job_id = _runpod_job(emulator, tasks[name])
        _attach(db, tasks[name], claimed["lease_token"], job_id, 600)
        emulator.finish_job(job_id, output={}, error=None if name == "complete" else "failed")
    db.sql("select complete_task(%s, %s, null, 'https://cdn.test/done.png', '{\"output\": {}}')",
           (tasks["complete"], db.task(tasks["complete"])["lease_token"]))
    db.sql("select fail_task(%s, %s, null, 'invalid_workflow: node 9 is missing', false)",
           (tasks["failed"], db.task(tasks["failed"])["lease_token"]))
    db.sql("select fail_task(%s, %s, null, 'CUDA error', true)", (tasks["gave_up"], db.task(tasks["gave_up"])["lease_token"]))
    # waiting out a retry backoff (an hour)
    tasks["backoff"] = db.insert_task("comfy", SEED_PARAMS)
    db.sql("select fail_task(%s, %s, null, 'RunPod 500', true, 3600, 3600)", (tasks["backoff"], _claim(db)["lease_token"]))
    # in flight: claimed by a dispatcher that died before /run (its lease runs out in 2 s)
    tasks["claimed"] = db.insert_task("comfy", SEED_PARAMS)
    _claim(db, lease_s=2)
    # in flight: running on RunPod, progress mirrored, its status check due
    tasks["running"] = db.insert_task("comfy", SEED_PARAMS)
    claimed = _claim(db)
    job = _runpod_job(emulator, tasks["running"])
    _attach(db, tasks["running"], claimed["lease_token"], job)
    db.sql("select record_progress(%s, %s, '{\"percent\": 40}')", (tasks["running"], claimed["lease_token"]))
    tasks["running_job"] = job
    # cancelled: one still queued, one whose RunPod job still has to be cancelled
    tasks["cancelled_queued"] = db.insert_task("comfy", SEED_PARAMS)
    db.sql("select cancel_task(%s, 'user cancelled')", (tasks["cancelled_queued"],))
    tasks["cancelled_running"] = db.insert_task("comfy", SEED_PARAMS)
    claimed = _claim(db)
    tasks["cancelled_job"] = _runpod_job(emulator, tasks["cancelled_running"])
    _attach(db, tasks["cancelled_running"], claimed["lease_token"], tasks["cancelled_job"], 600)
    db.sql("select cancel_task(%s, 'user cancelled')", (tasks["cancelled_running"],))
    # queued, as the seed inserts it (last: a claim takes the oldest queued task)
    db.sql(SEED_INSERT)
    tasks["queued"] = str(db.sql("select task_id from tasks where status = 'queued' and attempts = 0")[0]["task_id"])
    # the other tables: workers, the scaler's last decision, the pg_net hook's destination
    db.sql("select heartbeat('comfy-worker-pod1', 'busy', %s, '{\"gpu\": \"L4\"}')", (tasks["running"],))
    db.sql("select heartbeat('dispatcher-old', 'stopped', null, '{\"kind\": \"dispatcher\"}')")
    db.sql("select record_scaler_decision('EPA', '{\"outcome\": \"applied\", \"queued\": 3, \"target_min\": 1}')")
    db.sql("insert into dispatcher_wakeup (url, secret) values ('https://dispatcher.test/hooks/supabase', 's')")
    return tasks


def _snapshot(db) -> dict[str, list[dict[str, Any]]]:
    return {table: db.sql(f"select * from {table} order by 1") for table in
            ("tasks", "workers", "scaler_decisions", "dispatcher_wakeup")}


def test_a_database_of_the_previous_release_upgrades_with_every_row_intact_and_its_work_finished(
        legacy_db, emulator, pg_cluster, blank_db):
    db = legacy_db
    tasks = _fill(db, emulator)
    statuses = {r["status"] for r in db.sql("select status from tasks")}
    assert statuses == {"queued", "in_progress", "complete", "failed", "cancelled"}
    before = _snapshot(db)

    done = migrate_cli(db.dsn)
    assert done.returncode == 0, done.stderr
    assert ": 0 applied, " in done.stdout  # nothing was recorded before: the files are run again, harmlessly
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("applied ")] == \
        [m.name for m in select(discover())]

    after = _snapshot(db)
    for table, rows in before.items():  # every row, every column it had
        assert [{k: row[k] for k in rows[0]} for row in after[table]] == rows, table
    # the seed's SQL as users run it
    db.sql(SEED_INSERT)
    assert len(db.sql(SEED_TASKS_QUERY)) == 10
    assert db.sql(SEED_WORKERS_QUERY)[0]["id"] == "comfy-worker-pod1"
    assert db.sql(SEED_OUTPUT_QUERY, (tasks["complete"],)) == [{"output_url": "https://cdn.test/done.png"}]

    # the new release's dispatcher finishes what the old one left in flight
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator, DATABASE_URL=db.dsn, DISPATCHER_PUBLIC_URL="", WEBHOOK_SECRET="")

    async def scenario() -> None:
        async with running(settings):
            emulator.finish_job(tasks["running_job"], output={"outputs": [{"url": "https://cdn.test/running.png"}]})
            for name in ("queued", "claimed", "running"):
                await wait_for(lambda: db.task(tasks[name])["status"] == "complete", timeout_s=30, what=f"{name} complete")
            await wait_for(lambda: db.task(tasks["cancelled_running"])["runpod_cancelled_at"] is not None,
                           timeout_s=30, what="the pending RunPod cancel sent")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    assert db.task(tasks["running"])["output_url"] == "https://cdn.test/running.png"
    claimed = db.task(tasks["claimed"])  # its claim was lost (given back, 0090), then it ran once
    assert claimed["attempts"] == 1 and claimed["lost_claims"] == 1
    assert emulator.jobs[tasks["cancelled_job"]].status == "CANCELLED"
    assert db.task(tasks["backoff"])["status"] == "queued"  # still waiting out its hour
    for name in ("complete", "failed", "gave_up", "cancelled_queued"):  # finished: the new dispatcher left them be
        old = next(r for r in before["tasks"] if str(r["task_id"]) == tasks[name])
        assert {k: v for k, v in db.task(tasks[name]).items() if k in old} == old, name

    # and the schema is exactly what a new database gets from this release
    blank_db.sql(PG_NET_STUB_SQL)
    assert migrate_cli(blank_db.dsn, "--with", "0003", "--with", "0092").returncode == 0
    # record the optional trigger the old database already had, and add its cancel wake-up
    migrate_cli(db.dsn, "--with", "0003", "--with", "0092")
    assert schema_dump(pg_cluster, db.name) == schema_dump(pg_cluster, blank_db.name)
    assert [r["version"] for r in db.sql("select version from supabase_sync.schema_migrations order by 1")] == \
        [m.version for m in discover()]
