"""The direct PostgreSQL connection (DATABASE_URL): for `migrate` and the LISTEN wake-up.

Everything else the dispatcher does goes through PostgREST (store.py). A direct connection
must be one that keeps a session: Supabase's direct address (`db.<ref>.supabase.co:5432`)
or its session-mode pooler (`<region>.pooler.supabase.com:5432`). Supabase's
transaction-mode pooler (port 6543) hands each transaction to whichever server
connection is free, so a LISTEN (and migrate's session advisory lock) would stay behind
on a connection this process no longer talks to: such a URL is refused with that reason.

psycopg is imported here only, and only when DATABASE_URL is used: the worker image,
which never connects directly, does not install it.
"""

from __future__ import annotations

from typing import Any

TRANSACTION_POOLER_PORT = 6543
CONNECT_TIMEOUT_S = 10
# TCP keepalives: a connection that silently died (NAT timeout, a host gone) is noticed
# within about a minute instead of never, while it only waits for notifications.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class DatabaseUrlError(ValueError):
    """DATABASE_URL cannot be used; the message says why and what to use instead."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise DatabaseUrlError(
            "DATABASE_URL is set but psycopg is not installed: run the dispatcher image (Dockerfile.dispatcher) "
            "or install the dispatcher's requirements (pip install '.[dispatcher]')"
        ) from None
    return psycopg


def parameters(url: str) -> dict[str, Any]:
    """The connection's parameters (libpq's own parsing of a URL or a `key=value` string)."""
    psycopg = _psycopg()
    try:
        return psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUrlError(f"DATABASE_URL is not a PostgreSQL connection string: {exc}") from None


def check_url(url: str) -> None:
    """Refuse a URL that cannot hold a session (Supabase's transaction-mode pooler)."""
    params = parameters(url)
    ports = str(params.get("port") or "5432").split(",")
    if str(TRANSACTION_POOLER_PORT) in ports:
        raise DatabaseUrlError(
            f"DATABASE_URL points at port {TRANSACTION_POOLER_PORT}, Supabase's transaction-mode pooler, which cannot "
            "LISTEN (every transaction may run on another server connection, so notifications never come back) "
            "nor hold migrate's lock. Use the direct connection (db.<project ref>.supabase.co:5432) or the "
            "session pooler (<region>.pooler.supabase.com, port 5432)"
        )


def describe(url: str) -> str:
    """user@host:port/dbname, without the password, for logs and errors."""
    params = parameters(url)
    return (f"{params.get('user', '')}@{params.get('host', 'localhost')}:"
            f"{params.get('port', 5432)}/{params.get('dbname', params.get('user', ''))}")


def connect(url: str, application_name: str) -> Any:
    """A synchronous autocommit connection (migrate)."""
    psycopg = _psycopg()
    return psycopg.connect(url, autocommit=True, application_name=application_name, prepare_threshold=None,
                           connect_timeout=CONNECT_TIMEOUT_S, **_KEEPALIVES)


async def connect_async(url: str, application_name: str) -> Any:
    """An asyncio autocommit connection (the LISTEN wake-up)."""
    psycopg = _psycopg()
    return await psycopg.AsyncConnection.connect(url, autocommit=True, application_name=application_name,
                                                 prepare_threshold=None, connect_timeout=CONNECT_TIMEOUT_S,
                                                 **_KEEPALIVES)
