"""The migration files: found by pattern, versioned, tagged pre/post/optional, checksummed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from supabase_sync.migrations import MIGRATIONS_DIR, CatalogError, discover, migration_files, select
from supabase_sync.migrations.catalog import checksum, load, newest_version
from tests.comfy_env import ROOT


def test_the_package_migrations_are_found_by_pattern_in_version_order():
    found = discover()
    versions = [m.version for m in found]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert {"0001", "0002", "0003", "0050", "0060"} <= set(versions)
    assert all(path.name.endswith(".sql") for path in MIGRATIONS_DIR.iterdir() if path.is_file())
    assert {m.name for m in found} == {p.name for p in MIGRATIONS_DIR.glob("*.sql")}  # none left out
    assert [m.name for m in found if m.optional] == ["0003_trigger_pg_net.sql", "0092_trigger_pg_net_cancel.sql"]
    assert "0003_trigger_pg_net.sql" not in [m.name for m in select(found)]
    assert newest_version(found) == versions[-1]


def test_a_file_outside_the_naming_pattern_is_refused_by_name(tmp_path):
    (tmp_path / "0001_schema.sql").write_text("select 1;\n")
    (tmp_path / "70-claim-faster.sql").write_text("select 1;\n")
    with pytest.raises(CatalogError, match=r"70-claim-faster\.sql: not a migration name; expected NNNN_name\.sql"):
        discover(tmp_path)


def test_two_files_with_one_version_are_refused(tmp_path):
    (tmp_path / "0070_start_fence.sql").write_text("select 1;\n")
    (tmp_path / "0070_quarantine.sql").write_text("select 1;\n")
    with pytest.raises(CatalogError, match="0070_quarantine.sql and 0070_start_fence.sql share version 0070: renumber one"):
        discover(tmp_path)


def test_phase_comes_from_the_name_and_optional_from_the_first_line(tmp_path):
    for name, text in {"0061_pre_rename_x.sql": "select 1;\n", "0062_post_rename_x.sql": "select 1;\n",
                       "0063_plain.sql": "select 1;\n",
                       "0064_extra.sql": "-- supabase_sync 0064 (optional, needs pg_cron): ...\nselect 1;\n"}.items():
        (tmp_path / name).write_text(text)
    found = {m.name: m for m in discover(tmp_path)}
    assert [found[n].phase for n in sorted(found)] == ["pre", "post", "pre", "pre"]
    assert [found[n].optional for n in sorted(found)] == [False, False, False, True]
    (tmp_path / "0065_wrong.sql").write_text("-- supabase_sync 0064 (optional): copied header\n")
    with pytest.raises(CatalogError, match="0065_wrong.sql: its first line says it is migration 0064"):
        load(tmp_path / "0065_wrong.sql")


def test_asking_for_an_optional_migration_that_does_not_exist_is_named():
    with pytest.raises(CatalogError, match=r"no migration 0004 \(optional ones: 0003_trigger_pg_net.sql, 0092_trigger_pg_net_cancel.sql\)"):
        select(discover(), ["0004"])
    assert "0003_trigger_pg_net.sql" in [m.name for m in select(discover(), ["0003"])]


def test_the_checksum_reads_crlf_as_lf_and_sees_any_other_change():
    assert checksum("select 1;\r\nselect 2;\r\n") == checksum("select 1;\nselect 2;\n")
    assert checksum("select 1;\n") != checksum("select 1; \n")


def test_sql_prints_the_required_migrations_in_order_for_psql():
    out = subprocess.run([sys.executable, "-m", "supabase_sync", "sql"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    headers = [line[3:] for line in out.splitlines() if line.startswith("-- 0") and line.endswith(".sql")]
    assert headers == [p.name for p in migration_files()]
    assert "0003_trigger_pg_net.sql" not in headers
    with_trigger = subprocess.run([sys.executable, "-m", "supabase_sync", "sql", "--with-trigger"], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout
    assert "-- 0003_trigger_pg_net.sql\n" in with_trigger
