"""`python -m supabase_sync migrate` on a real PostgreSQL: order, records, checksums, locks, transactions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from supabase_sync.migrations import discover, select
from supabase_sync.migrations.runner import MigrationError, migrate
from tests.comfy_env import ROOT
from tests.fixtures.pgcluster import PG_NET_STUB_SQL
from tests.supabase_sync.migrations.conftest import migrate_cli, migrations_copy, schema_dump


def quiet(line: str) -> None:
    pass


def test_migrate_applies_every_required_migration_in_order_and_records_its_checksum(blank_db):
    done = migrate_cli(blank_db.dsn)
    assert done.returncode == 0, done.stderr
    required = select(discover())
    applied_lines = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("applied ")]
    assert applied_lines == [m.name for m in required]
    assert blank_db.records() == [{"version": m.version, "name": m.name, "checksum": m.checksum, "phase": m.phase}
                                  for m in required]
    assert blank_db.sql("select to_regclass('public.tasks') is not null as t")[0]["t"]
    again = migrate_cli(blank_db.dsn)
    assert again.returncode == 0 and "nothing to apply" in again.stdout and "applied 0" not in again.stdout


def test_a_dry_run_lists_what_would_be_applied_and_changes_nothing(blank_db):
    done = migrate_cli(blank_db.dsn, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would create supabase_sync.schema_migrations" in done.stdout
    assert [line.split()[2] for line in done.stdout.splitlines() if line.startswith("would apply")] == \
        [m.name for m in select(discover())]
    assert "optional     0003_trigger_pg_net.sql (not applied; add it with --with 0003)" in done.stdout
    assert blank_db.sql("select count(*) n from pg_namespace where nspname = 'supabase_sync'")[0]["n"] == 0
    assert blank_db.sql("select to_regclass('public.tasks') is null as absent")[0]["absent"]
    migrate(blank_db.dsn, report=quiet)
    after = migrate_cli(blank_db.dsn, "--dry-run")
    assert "applied      0060_notify_listeners.sql (" in after.stdout and "would apply" not in after.stdout


def test_a_file_changed_after_it_was_applied_is_refused_by_name_and_nothing_else_runs(blank_db, tmp_path):
    folder = migrations_copy(tmp_path)
    migrate(blank_db.dsn, directory=folder, report=quiet)
    functions = folder / "0002_functions.sql"
    functions.write_text(functions.read_text().replace("-- Claim up to", "-- Claim at most"))
    (folder / "0990_new_table.sql").write_text("create table if not exists public.added_later (id int);\n")
    with pytest.raises(MigrationError) as info:
        migrate(blank_db.dsn, directory=folder, report=quiet)
    message = str(info.value)
    assert message.startswith("0002_functions.sql was changed after it was applied on ")
    assert "append-only" in message and "Nothing was applied" in message
    assert blank_db.sql("select to_regclass('public.added_later') is null as absent")[0]["absent"]
    assert [r["version"] for r in blank_db.records()][-1] != "0990"


def test_a_renamed_applied_file_is_refused(blank_db, tmp_path):
    folder = migrations_copy(tmp_path)
    migrate(blank_db.dsn, directory=folder, report=quiet)
    (folder / "0050_scaler.sql").rename(folder / "0050_scaler_counts.sql")
    with pytest.raises(MigrationError, match="migration 0050 was applied as 0050_scaler.sql but this code calls it "
                                             "0050_scaler_counts.sql"):
        migrate(blank_db.dsn, directory=folder, dry_run=True, report=quiet)


def test_each_migration_is_its_own_transaction_and_a_failure_names_the_file_and_line(blank_db, tmp_path):
    folder = migrations_copy(tmp_path, {
        "0990_good.sql": "create table public.good_one (id int);\n",
        "0991_bad.sql": "create table public.half_done (id int);\n\nselect no_such_function();\n",
        "0992_after.sql": "create table public.never (id int);\n",
    })
    with pytest.raises(MigrationError) as info:
        migrate(blank_db.dsn, directory=folder, report=quiet)
    assert str(info.value).startswith("0991_bad.sql failed and was rolled back: line 3: function no_such_function() "
                                      "does not exist")
    present = blank_db.sql("select to_regclass('public.good_one') is not null g, to_regclass('public.half_done') is null h,"
                           " to_regclass('public.never') is null n")[0]
    assert present == {"g": True, "h": True, "n": True}
    assert [r["version"] for r in blank_db.records()][-1] == "0990"


def test_every_migration_can_run_again_without_changing_the_schema(blank_db, pg_cluster):
    # What makes `supabase db push` (or psql) and `migrate` safe to mix, and adopting a
    # database that was set up with psql before migrations were recorded.
    blank_db.sql(PG_NET_STUB_SQL)
    every_optional = [m.version for m in discover() if m.optional]
    migrate(blank_db.dsn, include=every_optional, report=quiet)
    blank_db.sql("insert into tasks (task_type) values ('comfy')")
    first = schema_dump(pg_cluster, blank_db.name)
    blank_db.sql("delete from supabase_sync.schema_migrations")
    result = migrate(blank_db.dsn, include=every_optional, report=quiet)
    assert [m.name for m in result.applied] == [m.name for m in discover()]
    assert schema_dump(pg_cluster, blank_db.name) == first
    assert blank_db.sql("select count(*) n from tasks")[0]["n"] == 1


def test_an_optional_migration_runs_only_when_asked_and_says_what_it_needs(blank_db):
    migrate(blank_db.dsn, report=quiet)
    assert "0003" not in [r["version"] for r in blank_db.records()]
    with pytest.raises(MigrationError, match="0003_trigger_pg_net.sql failed and was rolled back: supabase_sync 0003 "
                                             "needs the pg_net extension"):
        migrate(blank_db.dsn, include=["0003"], report=quiet)
    blank_db.sql(PG_NET_STUB_SQL)
    done = migrate_cli(blank_db.dsn, "--with", "0003")
    assert done.returncode == 0 and "applied 0003_trigger_pg_net.sql" in done.stdout
    assert blank_db.records()[2]["name"] == "0003_trigger_pg_net.sql"


def test_a_second_migrate_waits_for_the_lock_then_finds_nothing_to_do(blank_db):
    with psycopg.connect(blank_db.dsn, autocommit=True, application_name="holder") as holder:
        holder.execute("select pg_advisory_lock(hashtextextended('supabase_sync.migrate', 0))")
        waiting = subprocess.Popen([sys.executable, "-m", "supabase_sync", "migrate"], cwd=ROOT,
                                   env={**os.environ, "DATABASE_URL": blank_db.dsn},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first_line = waiting.stdout.readline()
        assert f"waiting for another migrate to finish: pid {holder.info.backend_pid} (holder" in first_line
        assert blank_db.sql("select count(*) n from pg_namespace where nspname = 'supabase_sync'")[0]["n"] == 0
        holder.execute("select pg_advisory_unlock(hashtextextended('supabase_sync.migrate', 0))")
        out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert len(blank_db.records()) == len(select(discover()))


def test_two_migrates_started_together_apply_each_migration_once(blank_db):
    env = {**os.environ, "DATABASE_URL": blank_db.dsn}
    runs = [subprocess.Popen([sys.executable, "-m", "supabase_sync", "migrate"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    applied = [line for out, _ in outputs for line in out.splitlines() if line.startswith("applied ")]
    assert sorted(line.split()[1] for line in applied) == sorted(m.name for m in select(discover()))
    assert len(blank_db.records()) == len(select(discover()))


def test_a_migration_whose_lock_is_taken_gives_way_and_tries_again(blank_db, tmp_path):
    migrate(blank_db.dsn, report=quiet)
    folder = migrations_copy(tmp_path, {"0990_add_column.sql": "alter table public.tasks add column if not exists x int;\n"})
    reports: list[str] = []
    blocker = psycopg.connect(blank_db.dsn)
    blocker.execute("select count(*) from tasks")  # an open transaction holding ACCESS SHARE on tasks
    worker = threading.Thread(target=lambda: migrate(blank_db.dsn, directory=folder, lock_timeout_s=0.2,
                                                     report=reports.append))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not any("a lock was not free" in line for line in reports):
            assert time.monotonic() < deadline, reports
            time.sleep(0.05)
        # while it backs off, other queries on tasks are not queued behind its ALTER
        with psycopg.connect(blank_db.dsn, autocommit=True) as other:
            other.execute("set statement_timeout = '2s'")
            other.execute("insert into tasks (task_type) values ('comfy')")
    finally:
        blocker.rollback()
        blocker.close()
        worker.join(60)
    assert any(line.startswith("applied 0990_add_column.sql") for line in reports), reports
    assert "1/5" in next(line for line in reports if "a lock was not free" in line)


def test_a_lock_that_never_frees_fails_the_migration_by_name(blank_db, tmp_path, monkeypatch):
    from supabase_sync.migrations import runner

    migrate(blank_db.dsn, report=quiet)
    monkeypatch.setattr(runner, "LOCK_ATTEMPTS", 2)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    folder = migrations_copy(tmp_path, {"0990_add_column.sql": "alter table public.tasks add column if not exists x int;\n"})
    with psycopg.connect(blank_db.dsn) as blocker:
        blocker.execute("select count(*) from tasks")
        with pytest.raises(MigrationError, match=r"0990_add_column.sql could not take its locks \(canceling statement "
                                                 r"due to lock timeout\) in 2 tries of 0.1 s"):
            migrate(blank_db.dsn, directory=folder, lock_timeout_s=0.1, report=quiet)
    assert "0990" not in [r["version"] for r in blank_db.records()]


def test_a_transaction_mode_pooler_url_is_refused_before_connecting():
    done = migrate_cli("postgresql://postgres.abcd:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
    assert done.returncode == 2
    assert "port 6543, Supabase's transaction-mode pooler, which cannot LISTEN" in done.stderr
    assert "session pooler" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "supabase_sync", "migrate"], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"})
    assert missing.returncode == 2 and "DATABASE_URL is not set" in missing.stderr


def test_an_unreachable_database_is_named_without_its_password(blank_db):
    done = migrate_cli("postgresql://postgres:s3cret@127.0.0.1:9/postgres?connect_timeout=2")
    assert done.returncode == 1
    assert "postgres@127.0.0.1:9/postgres" in done.stderr and "s3cret" not in done.stderr


def test_a_file_that_builds_an_index_concurrently_runs_statement_by_statement_and_is_recorded(blank_db, tmp_path):
    folder = migrations_copy(tmp_path, {"0990_big_index.sql": (
        "create table if not exists public.big (id int);\n"
        "insert into public.big select generate_series(1, 1000);\n"
        "create index concurrently if not exists big_id_idx on public.big (id);\n")})
    reports: list[str] = []
    migrate(blank_db.dsn, directory=folder, report=reports.append)
    assert any(line.startswith("applied 0990_big_index.sql (pre, statement by statement,") for line in reports)
    assert blank_db.sql("select indisvalid from pg_index where indexrelid = 'public.big_id_idx'::regclass") == \
        [{"indisvalid": True}]
    assert blank_db.records()[-1]["name"] == "0990_big_index.sql"
    assert "0080_pipelines.sql (pre, statement by statement," in "".join(reports)  # the real one that needs it


def test_a_failing_statement_of_such_a_file_is_named_by_line_and_what_ran_before_it_stays(blank_db, tmp_path):
    folder = migrations_copy(tmp_path, {"0990_half.sql": (
        "create table if not exists public.kept (id int);\n"
        "create index concurrently if not exists kept_idx on public.kept (id);\n"
        "\n"
        "select no_such_function();\n")})
    with pytest.raises(MigrationError) as info:
        migrate(blank_db.dsn, directory=folder, report=quiet)
    message = str(info.value)
    assert message.startswith("0990_half.sql failed: line 4: function no_such_function() does not exist")
    assert "the statements before that one stay applied" in message
    assert blank_db.sql("select to_regclass('public.kept_idx') is not null as kept")[0]["kept"]
    assert "0990" not in [r["version"] for r in blank_db.records()]
    (folder / "0990_half.sql").write_text((folder / "0990_half.sql").read_text().replace("no_such_function()", "1"))
    migrate(blank_db.dsn, directory=folder, report=quiet)  # fixed: runs again from the top, harmlessly
    assert blank_db.records()[-1]["version"] == "0990"


def test_statements_are_split_by_quotes_and_bodies_and_only_real_commands_need_autocommit():
    from supabase_sync.migrations.statements import runs_outside_a_transaction, split

    sql = ("create function f() returns text language plpgsql as $body$ begin return 'a;b'; end $body$;\n"
           "-- create index concurrently mentioned in a comment;\n"
           "do $$ begin raise notice 'drop index concurrently x;'; end $$;\n"
           "select 'vacuum;' as v;\n")
    assert [line for line, _ in split(sql)] == [1, 3, 4]
    assert not runs_outside_a_transaction(sql)
    assert runs_outside_a_transaction(sql + "/* why */ create unique index concurrently u on t (a);\n")
    assert runs_outside_a_transaction("VACUUM analyze tasks;")
