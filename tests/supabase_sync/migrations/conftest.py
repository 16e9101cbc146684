"""Fixtures for the migration tests: an empty database (Supabase's roles, nothing of ours),
`python -m supabase_sync migrate` as a process, and a schema dump to compare databases."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from supabase_sync.migrations import MIGRATIONS_DIR
from tests.comfy_env import ROOT
from tests.fixtures.pgcluster import PG_NET_STUB_SQL, PgCluster, pg_bin
from tests.fixtures.postgres import Database, served
from tests.supabase_sync.harness import release_command

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


def migrate_cli(dsn: str, *args: str, release: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m supabase_sync migrate ARGS` with DATABASE_URL=dsn, as an operator runs it (from `release`'s copy)."""
    return subprocess.run(release_command(release, "migrate", *args), cwd=ROOT, env={**os.environ, "DATABASE_URL": dsn},
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


# The dispatcher as deployed before numbered migrations (main at 764e9a6), frozen:
# tests/fixtures/releases/README.md says how it was made.
PREVIOUS_RELEASE = ROOT / "tests" / "fixtures" / "releases" / "supabase_sync-764e9a6.zip"


@pytest.fixture()
def previous_release(tmp_path: Path) -> Path:
    """The previous release's supabase_sync, unpacked: a folder to put first on sys.path."""
    folder = tmp_path / "previous-release"
    with zipfile.ZipFile(PREVIOUS_RELEASE) as archive:
        archive.extractall(folder)
    return folder


def psql_script(cluster: PgCluster, dbname: str, script: str) -> subprocess.CompletedProcess:
    """Feed a script to psql on stdin, stopping at the first error, as `... | psql` does."""
    return subprocess.run([pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", cluster.dsn(dbname=dbname)],
                          input=script, capture_output=True, text=True)


@pytest.fixture()
def legacy_db(pg_cluster: PgCluster, previous_release: Path) -> Iterator[Database]:
    """A database set up as the previous release told users to: pg_net enabled, then
    `python -m supabase_sync sql --with-trigger | psql` (no migration records); PostgREST in front."""
    name = f"legacy{next(_numbers)}"
    pg_cluster.create_database(name, with_migrations=False)
    with psycopg.connect(pg_cluster.dsn(dbname=name), autocommit=True) as conn:
        conn.execute(PG_NET_STUB_SQL)
    script = subprocess.run(release_command(previous_release, "sql", "--with-trigger"), cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    applied = psql_script(pg_cluster, name, script)
    assert applied.returncode == 0, applied.stderr
    with served(pg_cluster, name) as database:
        yield database
