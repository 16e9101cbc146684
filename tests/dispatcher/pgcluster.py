"""A throwaway PostgreSQL 15 cluster with Supabase's roles, and the migrations applied with psql.

Used by the dispatcher tests (one cluster per pytest session) and by bench/bench_dispatcher.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from supabase_sync.migrations import migration_files

# What a Supabase project has before any migration of ours: the API roles, the
# authenticator that PostgREST logs in as, and default privileges that grant every new
# table and function in `public` to anon and authenticated (so our revokes are tested
# against what Supabase really does, not a friendlier default).
SUPABASE_ROLES_SQL = """
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
"""

# pg_net is not packaged for Debian: a stand-in with pg_net's signature that hands each
# request to a LISTENing bridge (tests/dispatcher/pg_net_double.py) after commit, as
# pg_net's background worker sends requests only for committed transactions.
PG_NET_STUB_SQL = """
create schema if not exists net;
create sequence if not exists net.request_id_seq;
create or replace function net.http_post(
    url text, body jsonb default '{}'::jsonb, params jsonb default '{}'::jsonb,
    headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
    timeout_milliseconds integer default 5000
) returns bigint language plpgsql as $$
declare
    v_id bigint := nextval('net.request_id_seq');
begin
    perform pg_notify('pg_net_http_post', json_build_object(
        'id', v_id, 'url', url, 'body', body, 'headers', headers,
        'timeout_milliseconds', timeout_milliseconds)::text);
    return v_id;
end
$$;
"""


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: from PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return str(candidates[-1])
    raise RuntimeError(f"PostgreSQL's {name} was not found on PATH or in /usr/lib/postgresql/*/bin: "
                       "install the server (Debian: apt-get install postgresql-15)")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgCluster:
    """A running cluster in a temp dir, on a loopback port; stop() removes it."""

    root: Path
    port: int
    durable: bool = False
    _started: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, user: str = "postgres", dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; CI containers often are root.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def start(self) -> "PgCluster":
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._as_owner([pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True,
        )
        opts = [
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}",
            "-c max_connections=200", "-c shared_buffers=64MB",
        ]
        if not self.durable:
            # a test cluster lives for minutes: durability only costs time here
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        subprocess.run(
            self._as_owner([pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.root / "log"), "-w", "-t", "30",
                            "-o", " ".join(opts), "start"]),
            check=True, capture_output=True,
        )
        self._started = True
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(SUPABASE_ROLES_SQL)
        return self

    def psql_file(self, path: Path, dbname: str = "postgres") -> subprocess.CompletedProcess:
        """Apply one SQL file as a user would: psql, stop at the first error."""
        return subprocess.run(
            [pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname=dbname), "-f", str(path)],
            capture_output=True, text=True,
        )

    def create_database(self, name: str, with_migrations: bool = True) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        with psycopg.connect(self.dsn(dbname=name), autocommit=True) as conn:
            conn.execute("grant usage on schema public to anon, authenticated, service_role")
            conn.execute(
                "alter default privileges in schema public grant all on tables to anon, authenticated, service_role;"
                "alter default privileges in schema public grant all on functions to anon, authenticated, service_role;"
            )
        if with_migrations:
            for path in migration_files():
                done = self.psql_file(path, dbname=name)
                if done.returncode != 0:
                    raise RuntimeError(f"{path.name} failed: {done.stderr}")
        return self.dsn(dbname=name)

    def stop(self) -> None:
        if self._started:
            subprocess.run(
                self._as_owner([pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"]), capture_output=True
            )
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(durable: bool = False) -> PgCluster:
    root = Path(tempfile.mkdtemp(prefix="supabase-sync-pg-"))
    os.chmod(root, 0o700)
    return PgCluster(root=root, port=_free_port(), durable=durable).start()
