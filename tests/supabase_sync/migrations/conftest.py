"""Fixtures for the migration tests: an empty database (Supabase's roles, nothing of ours),
`python -m supabase_sync migrate` as a process, and a schema dump to compare databases."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from supabase_sync.migrations import MIGRATIONS_DIR
from tests.comfy_env import ROOT
from tests.fixtures.pgcluster import PgCluster, pg_bin

_numbers = itertools.count(1)


@dataclass
class BlankDatabase:
    """A database as a new Supabase project has it: the API roles, no tables of ours."""

    cluster: PgCluster
    name: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(dbname=self.name)

    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def records(self) -> list[dict[str, Any]]:
        return self.sql("select version, name, checksum, phase from supabase_sync.schema_migrations order by version")


@pytest.fixture()
def blank_db(pg_cluster: PgCluster) -> Iterator[BlankDatabase]:
    name = f"m{next(_numbers)}"
    pg_cluster.create_database(name, with_migrations=False)
    try:
        yield BlankDatabase(pg_cluster, name)
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def migrate_cli(dsn: str, *args: str, cwd: Path = ROOT, pythonpath: Path | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m supabase_sync migrate ARGS` with DATABASE_URL=dsn, as an operator runs it.

    With `pythonpath`, the supabase_sync found there runs (another release's copy)."""
    env = {**os.environ, "DATABASE_URL": dsn}
    code = "import runpy, sys; sys.argv[0] = 'supabase_sync'; runpy.run_module('supabase_sync', run_name='__main__')"
    if pythonpath is not None:
        code = f"import sys; sys.path.insert(0, {str(pythonpath)!r}); " + code
    return subprocess.run([sys.executable, "-c", code, "migrate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def schema_dump(cluster: PgCluster, dbname: str) -> str:
    """pg_dump --schema-only, without its comments and per-dump tokens: equal text, equal schema."""
    out = subprocess.run([pg_bin("pg_dump"), "--schema-only", "-d", cluster.dsn(dbname=dbname)],
                         capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if line and not line.startswith("--") and not line.startswith(("\\restrict", "\\unrestrict")))


def migrations_copy(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    """A copy of the package's migrations folder, with extra files {name: sql} added."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder
