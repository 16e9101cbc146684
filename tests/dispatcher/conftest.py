"""Fixtures for the dispatcher tests: one real PostgreSQL per session, a fresh database per
test (copied from a migrated template), and the PostgREST double in front of it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.dispatcher.pgcluster import PgCluster, start_cluster
from tests.doubles.postgrest import PostgrestDouble, make_key

_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = start_cluster()
    try:
        cluster.create_database("migrated_template")
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Database:
    """One test's database: SQL as the owner, and a Supabase-like API in front of it."""

    cluster: PgCluster
    name: str
    postgrest: PostgrestDouble

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(dbname=self.name)

    @property
    def url(self) -> str:
        return self.postgrest.url

    service_key: str = make_key("service_role")
    anon_key: str = make_key("anon")
    authenticated_key: str = make_key("authenticated")

    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """Run SQL as the database owner (what an operator does in the SQL editor)."""
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def insert_task(self, task_type: str = "comfy", params: Any = None, **columns: Any) -> str:
        import json

        cols = {"task_type": task_type, "params": json.dumps(params if params is not None else {}), **columns}
        names = ", ".join(cols)
        marks = ", ".join(["%s"] * len(cols))
        return str(self.sql(f"insert into tasks ({names}) values ({marks}) returning task_id", list(cols.values()))[0]["task_id"])

    def task(self, task_id: str) -> dict[str, Any]:
        return self.sql("select * from tasks where task_id = %s", (task_id,))[0]


@pytest.fixture()
def db(pg_cluster: PgCluster) -> Iterator[Database]:
    name = f"t{next(_db_numbers)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'create database "{name}" template migrated_template')
    postgrest = PostgrestDouble(pg_cluster.dsn(user="authenticator", dbname=name)).start()
    try:
        yield Database(pg_cluster, name, postgrest)
    finally:
        postgrest.stop()
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def emulator() -> Iterator[Any]:
    from tests.doubles.runpod_emulator import RunPodEmulator

    emu = RunPodEmulator(webhook_retry_delay_s=0.2, job_take_wait_s=0.5).start()
    try:
        yield emu
    finally:
        emu.stop()
