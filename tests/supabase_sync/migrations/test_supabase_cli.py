"""The Supabase CLI layout (supabase/migrations/<timestamp>_<name>.sql) is the package's migrations, byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime

from supabase_sync.migrations import discover
from supabase_sync.migrations.supabase_cli import layout_problems, write_layout
from tests.comfy_env import ROOT


def test_the_repositorys_supabase_layout_is_identical_to_the_package_migrations():
    assert layout_problems(discover(), ROOT / "supabase") == []
    done = subprocess.run([sys.executable, "-m", "supabase_sync", "supabase-layout", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    required = sorted(p.name.split("_", 1)[1] for p in (ROOT / "supabase" / "migrations").glob("*.sql"))
    assert required == [m.name for m in discover() if not m.optional]
    assert sorted(p.name.split("_", 1)[1] for p in (ROOT / "supabase" / "optional-migrations").glob("*.sql")) == \
        [m.name for m in discover() if m.optional]


def _copy(tmp_path):
    root = tmp_path / "supabase"
    shutil.copytree(ROOT / "supabase", root)
    return root


def test_a_changed_missing_extra_or_misordered_file_is_named(tmp_path):
    root = _copy(tmp_path)
    [schema] = root.glob("migrations/*_0001_schema.sql")
    schema.write_text(schema.read_text() + "-- edited\n")
    [scaler] = root.glob("migrations/*_0050_scaler.sql")
    scaler.unlink()
    (root / "migrations" / "20990101000000_0099_leftover.sql").write_text("select 1;\n")
    [functions] = root.glob("migrations/*_0002_functions.sql")
    functions.rename(root / "migrations" / f"19990101000000_{functions.name.split('_', 1)[1]}")
    (root / "migrations" / "20000101000000_add_profiles.sql").write_text("select 1;\n")  # the user's own: not ours
    problems = "\n".join(layout_problems(discover(), root))
    assert f"migrations/{schema.name} differs from supabase_sync/sql/migrations/0001_schema.sql" in problems
    assert "0050_scaler.sql: 0 files in the Supabase CLI layout (none); expected one in migrations/" in problems
    assert "migrations/20990101000000_0099_leftover.sql: no migration 0099_leftover.sql in the package" in problems
    assert "0002_functions.sql is timestamped 19990101000000, not after 0001_schema.sql" in problems
    assert "add_profiles" not in problems
    assert problems.count("(fix: python -m supabase_sync supabase-layout)") == 4


def test_writing_keeps_every_timestamp_already_laid_out_and_gives_a_new_migration_the_time_after(tmp_path):
    root = _copy(tmp_path)
    before = sorted(p.name for p in root.rglob("*.sql"))
    assert write_layout(discover(), root) == []  # identical already: nothing written
    assert sorted(p.name for p in root.rglob("*.sql")) == before
    newest = max(p.name[:14] for p in root.rglob("*.sql"))
    [latest] = root.glob(f"*/{newest}_*.sql")
    latest.unlink()  # as if the newest migration had just been added to the package
    [written] = write_layout(discover(), root, now=datetime(2000, 1, 1))  # even with a clock behind the layout
    assert written.name.split("_", 1)[1] == latest.name.split("_", 1)[1]
    assert written.name[:14] > max(p.name[:14] for p in root.rglob("*.sql") if p != written)
    assert layout_problems(discover(), root) == []


def test_a_migration_numbered_below_laid_out_ones_is_timestamped_between_them(tmp_path):
    root = _copy(tmp_path)
    [functions] = root.glob("migrations/*_0002_functions.sql")
    [schema] = root.glob("migrations/*_0001_schema.sql")
    functions.unlink()
    [written] = write_layout(discover(), root, now=datetime(2100, 1, 1))
    assert schema.name[:14] < written.name[:14] < min(p.name[:14] for p in root.rglob("*_00[3-9]*.sql"))
    assert layout_problems(discover(), root) == []
