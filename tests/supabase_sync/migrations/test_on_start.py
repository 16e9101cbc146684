"""The dispatcher and the schema at start-up: MIGRATE_ON_START, and the check without it."""

from __future__ import annotations

import os
import subprocess
import threading

import psycopg

from supabase_sync.migrations import discover, select
from tests.comfy_env import ROOT, free_port
from tests.fixtures.postgres import served
from tests.supabase_sync.harness import DispatcherProcess, dispatcher_env, release_command, wait_for_sync
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS


def test_migrate_on_start_sets_up_a_new_database_once_even_from_two_replicas(blank_db, emulator, tmp_path):
    with served(blank_db.cluster, blank_db.name) as db:
        _two_replicas_migrate_then_dispatch(blank_db, db, emulator, tmp_path)


def _two_replicas_migrate_then_dispatch(blank_db, db, emulator, tmp_path) -> None:
    replicas = [DispatcherProcess(dispatcher_env(db, emulator, free_port(), DISPATCHER_ID=f"replica-{n}",
                                                 DATABASE_URL=db.dsn, MIGRATE_ON_START="true", POLL_INTERVAL="30"),
                                  tmp_path / f"replica-{n}.log") for n in range(2)]
    try:
        for replica in replicas:
            replica.start(wait=False)
        starts = [threading.Thread(target=replica.wait_healthy) for replica in replicas]
        for start in starts:
            start.start()
        for start in starts:
            start.join(60)
        assert all(r.proc.poll() is None for r in replicas)
        assert [r["name"] for r in blank_db.records()] == [m.name for m in select(discover())]
        logs = "".join(r.log_path.read_text() for r in replicas)
        assert logs.count("applied 0001_schema.sql") == 1  # one replica migrated, the other found it done
        task_id = db.insert_task("comfy", SEED_PARAMS)
        wait_for_sync(lambda: emulator.submissions_for(task_id), timeout_s=5, what="submitted (through LISTEN)")
    finally:
        for replica in replicas:
            replica.terminate()


def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(release_command(None), cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)


def test_without_migrate_on_start_a_missing_migration_stops_the_start_and_says_what_to_run(db, emulator):
    db.sql("delete from supabase_sync.schema_migrations where name = '0060_notify_listeners.sql'")
    done = _start(dispatcher_env(db, emulator, free_port(), DATABASE_URL=db.dsn))
    assert done.returncode == 2
    assert ("the database lacks migrations this release needs: 0060_notify_listeners.sql; run "
            "`python -m supabase_sync migrate --pre` (or set MIGRATE_ON_START=true)") in done.stderr


def test_a_database_set_up_with_psql_only_starts_and_says_to_record_it(db, emulator, tmp_path):
    db.sql("drop table supabase_sync.schema_migrations")  # what `sql | psql` or `supabase db push` leaves
    proc = DispatcherProcess(dispatcher_env(db, emulator, free_port(), DATABASE_URL=db.dsn), tmp_path / "d.log").start()
    try:
        task_id = db.insert_task("comfy", SEED_PARAMS)
        wait_for_sync(lambda: emulator.submissions_for(task_id), timeout_s=10, what="submitted")
    finally:
        proc.terminate()
    assert "no migration records (schema applied with psql or `supabase db push`?)" in proc.log_path.read_text()


def test_migrate_on_start_needs_a_database_url_and_a_failing_migration_stops_the_start(db, emulator):
    done = _start(dispatcher_env(db, emulator, free_port(), MIGRATE_ON_START="true"))
    assert done.returncode == 2
    assert "MIGRATE_ON_START is true but DATABASE_URL is not set" in done.stderr
    # a database whose recorded 0002 no longer matches the file: refused, and nothing starts
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("update supabase_sync.schema_migrations set checksum = 'edited' where version = '0002'")
    done = _start(dispatcher_env(db, emulator, free_port(), DATABASE_URL=db.dsn, MIGRATE_ON_START="true"))
    assert done.returncode == 2
    assert "migrations: 0002_functions.sql was changed after it was applied" in done.stderr
