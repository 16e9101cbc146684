"""`python -m supabase_sync migrate`: apply the pending migrations, record each one.

* One session advisory lock for the whole run: a second migrate (another replica starting
  with MIGRATE_ON_START) waits, then finds nothing left to do.
* Every applied migration is recorded in `supabase_sync.schema_migrations` with its
  checksum. Before anything is applied, every recorded one is checked against its file:
  a file changed after it was applied is refused, naming the file (migrations are
  append-only).
* Each migration runs in its own transaction together with its record, so a failure
  leaves neither half a migration nor a record of one. Its locks are taken with a short
  `lock_timeout`: an ALTER waiting behind a long query would otherwise hold up every
  query on the table behind it; it gives up, lets them through, and tries again.
* A post migration (a removal) waits while a dispatcher that does not ship it is alive
  (its `workers` heartbeat says which migrations it ships); `--pre` stops before the
  first post migration in any case.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from supabase_sync.database import connect, describe
from supabase_sync.migrations.catalog import MIGRATIONS_DIR, Migration, discover, select
from supabase_sync.migrations.statements import runs_outside_a_transaction, split

SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "migrate"
LOCK_WAIT_S = 600.0  # how long to wait for another migrate before giving up
LOCK_ATTEMPTS = 5    # tries of one migration whose locks are not free within lock_timeout

Report = Callable[[str], None]


class MigrationError(RuntimeError):
    """Migrating stopped; the message names the file and the reason. Nothing half-applied remains."""


@dataclass(frozen=True)
class Record:
    """A row of supabase_sync.schema_migrations."""

    version: str
    name: str
    checksum: str
    phase: str
    applied_at: datetime


@dataclass
class Plan:
    """What the database has, measured against the files."""

    applied: list[Migration] = field(default_factory=list)
    pending: list[Migration] = field(default_factory=list)
    not_requested: list[Migration] = field(default_factory=list)  # optional, neither applied nor asked for
    unknown: list[Record] = field(default_factory=list)           # recorded, but this code has no such file
    records: dict[str, Record] = field(default_factory=dict)


@dataclass
class MigrateResult:
    """What one run did and what it left."""

    plan: Plan
    applied: list[Migration] = field(default_factory=list)
    left_pending: list[Migration] = field(default_factory=list)
    blocked_by: list[str] = field(default_factory=list)  # live dispatchers a post migration waits for

    @property
    def missing_pre(self) -> list[Migration]:
        """Pending pre migrations: code of this release cannot run without them."""
        return [m for m in self.left_pending if m.phase == "pre"]


def _named_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", path.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


QUERIES = _named_queries(SQL_DIR / "queries.sql")


def read_plan(conn: Any, migrations: Iterable[Migration], wanted: Iterable[Migration]) -> Plan:
    """Compare the records with the files; a changed or renamed applied file is a MigrationError."""
    wanted_names = {m.name for m in wanted}
    plan = Plan()
    if conn.execute(QUERIES["records_exist"]).fetchone()[0]:
        rows = conn.execute(QUERIES["applied"]).fetchall()
        plan.records = {row[0]: Record(*row) for row in rows}
    by_version = {}
    for migration in migrations:
        by_version[migration.version] = migration
        record = plan.records.get(migration.version)
        if record is None:
            (plan.pending if migration.name in wanted_names else plan.not_requested).append(migration)
            continue
        if record.name != migration.name:
            raise MigrationError(f"migration {migration.version} was applied as {record.name} but this code calls it "
                                 f"{migration.name}: a released migration keeps its name; give the new one a new number")
        if record.checksum != migration.checksum:
            raise MigrationError(
                f"{migration.name} was changed after it was applied on {record.applied_at:%Y-%m-%d %H:%M} "
                f"(recorded sha256 {record.checksum[:12]}…, the file now {migration.checksum[:12]}…). Migrations are "
                "append-only: restore the file and put the change in a new migration. Nothing was applied."
            )
        plan.applied.append(migration)
    plan.unknown = [r for v, r in sorted(plan.records.items()) if v not in by_version]
    return plan


def migrate(url: str, *, directory: Path = MIGRATIONS_DIR, include: Iterable[str] = (), pre_only: bool = False,
            dry_run: bool = False, lock_timeout_s: float = 5.0, own_dispatcher_id: str | None = None,
            report: Report = print) -> MigrateResult:
    """Apply what is pending (see the module docstring); returns what was done and what is left."""
    every = discover(directory)
    wanted = select(every, include)
    conn = connect(url, application_name="supabase_sync migrate")
    try:
        if dry_run:
            return _dry_run(conn, url, every, wanted, pre_only, own_dispatcher_id, report)
        _lock(conn, report)
        try:
            with conn.transaction():
                conn.execute((SQL_DIR / "bootstrap.sql").read_text())
            plan = read_plan(conn, every, wanted)
            _describe(plan, url, report)
            return _apply(conn, plan, pre_only, lock_timeout_s, own_dispatcher_id, report)
        finally:
            if not conn.broken:  # a lost connection released the session lock already
                conn.execute(QUERIES["unlock"])
    finally:
        conn.close()


def _describe(plan: Plan, url: str, report: Report) -> None:
    report(f"migrate: {describe(url)}: {len(plan.applied)} applied, {len(plan.pending)} pending")
    for record in plan.unknown:
        report(f"note: {record.name} (applied {record.applied_at:%Y-%m-%d %H:%M}) is not in this release: the database "
               "was migrated by a newer one")
    newest_applied = max((m.version for m in plan.applied), default="")
    for migration in plan.pending:
        if migration.version < newest_applied:
            report(f"note: {migration.name} is older than migration {newest_applied}, already applied: "
                   "it is applied out of order")


def _dry_run(conn: Any, url: str, every: list[Migration], wanted: list[Migration], pre_only: bool,
             own_id: str | None, report: Report) -> MigrateResult:
    plan = read_plan(conn, every, wanted)
    _describe(plan, url, report)
    if not plan.records:
        report("would create supabase_sync.schema_migrations")
    for migration in plan.applied:
        record = plan.records[migration.version]
        report(f"applied      {migration.name} ({record.applied_at:%Y-%m-%d %H:%M}, checksum ok)")
    for migration in plan.not_requested:
        report(f"optional     {migration.name} (not applied; add it with --with {migration.version})")
    now, later, blockers, why = _split(conn, plan, pre_only, own_id)
    for migration in now:
        report(f"would apply  {migration.name} ({migration.phase})")
    if later:
        report(f"would wait   {why}")
        for migration in later:
            report(f"would wait   {migration.name} ({migration.phase})")
    return MigrateResult(plan=plan, left_pending=later, blocked_by=blockers)


def _split(conn: Any, plan: Plan, pre_only: bool, own_id: str | None) -> tuple[list[Migration], list[Migration], list[str], str]:
    """The pending migrations to apply now, those that wait (from the first post migration that must), and why."""
    for index, migration in enumerate(plan.pending):
        if migration.phase != "post":
            continue
        if pre_only:
            return (plan.pending[:index], plan.pending[index:], [],
                    f"from {migration.name} on: a post migration, applied once every dispatcher runs this release "
                    "(`migrate` without --pre)")
        blockers = _older_dispatchers(conn, migration, own_id)
        if blockers:
            return (plan.pending[:index], plan.pending[index:], blockers,
                    f"from {migration.name} on: a post migration, and dispatchers of an older release are still "
                    f"running: {', '.join(blockers)}. It is applied once they have stopped.")
    return plan.pending, [], [], ""


def _lock(conn: Any, report: Report) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    told = False
    while not conn.execute(QUERIES["try_lock"]).fetchone()[0]:
        if not told:
            holder = conn.execute(QUERIES["lock_holder"]).fetchone()
            who = f"pid {holder[0]} ({holder[1] or 'no application name'}, from {holder[2] or 'local'})" if holder else "another session"
            report(f"waiting for another migrate to finish: {who} holds the migration lock")
            told = True
        if time.monotonic() > deadline:
            raise MigrationError(f"another migrate held the migration lock for more than {LOCK_WAIT_S:.0f} s; "
                                 "nothing was applied")
        time.sleep(0.5)


def _older_dispatchers(conn: Any, migration: Migration, own_id: str | None) -> list[str]:
    if not conn.execute("select to_regclass('public.workers') is not null").fetchone()[0]:
        return []
    rows = conn.execute(QUERIES["older_dispatchers"], {"version": migration.version, "own_id": own_id}).fetchall()
    return [f"{row[0]} (ships up to {row[1]})" for row in rows]


def _apply(conn: Any, plan: Plan, pre_only: bool, lock_timeout_s: float, own_id: str | None,
           report: Report) -> MigrateResult:
    now, later, blockers, why = _split(conn, plan, pre_only, own_id)
    result = MigrateResult(plan=plan, left_pending=later, blocked_by=blockers)
    for migration in now:
        _apply_one(conn, migration, lock_timeout_s, report)
        result.applied.append(migration)
    if later:
        report(f"not applied yet {why}")
    elif not now:
        report("nothing to apply")
    return result


def _apply_one(conn: Any, migration: Migration, lock_timeout_s: float, report: Report) -> None:
    import psycopg

    outside = runs_outside_a_transaction(migration.sql)
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        started = time.monotonic()
        try:
            if outside:
                _run_statement_by_statement(conn, migration, lock_timeout_s)
                _record(conn, migration, started)
            else:
                with conn.transaction():
                    _set_timeouts(conn, lock_timeout_s, local=True)
                    conn.execute(migration.sql)
                    _record(conn, migration, started)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected, _StatementFailed) as exc:
            failure = exc.error if isinstance(exc, _StatementFailed) else exc
            if not isinstance(failure, (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)):
                raise MigrationError(
                    f"{migration.name} failed: {_explain(failure, exc.statement, exc.line)}. It runs statement "
                    "by statement, outside a transaction (it has a command PostgreSQL refuses inside one, such as "
                    "CREATE INDEX CONCURRENTLY), so the statements before that one stay applied; they are written "
                    "to run again: fix the cause and migrate again"
                ) from None
            if attempt == LOCK_ATTEMPTS:
                left = ("the statements before the one that waited stay applied and run again next time" if outside
                        else "nothing of it was applied")
                raise MigrationError(
                    f"{migration.name} could not take its locks ({failure.diag.message_primary}) in {LOCK_ATTEMPTS} "
                    f"tries of {lock_timeout_s:g} s: a long transaction holds the table; {left}"
                ) from None
            pause = min(2.0 ** attempt, 15.0) * (0.5 + random.random() / 2)
            report(f"{migration.name}: a lock was not free within {lock_timeout_s:g} s; trying again in {pause:.1f} s "
                   f"({attempt}/{LOCK_ATTEMPTS})")
            time.sleep(pause)
            continue
        except psycopg.Error as exc:
            raise MigrationError(f"{migration.name} failed and was rolled back: {_explain(exc, migration.sql)}") from None
        how = ", statement by statement" if outside else ""
        report(f"applied {migration.name} ({migration.phase}{how}, {int((time.monotonic() - started) * 1000)} ms)")
        return


class _StatementFailed(Exception):
    """A statement of a file run statement by statement failed (the line where it starts)."""

    def __init__(self, line: int, statement: str, error: Any) -> None:
        super().__init__(str(error))
        self.line, self.statement, self.error = line, statement, error


def _set_timeouts(conn: Any, lock_timeout_s: float, local: bool) -> None:
    from psycopg import sql

    scope = sql.SQL("local ") if local else sql.SQL("")
    conn.execute(sql.SQL("set {}lock_timeout = {}").format(scope, sql.Literal(f"{int(lock_timeout_s * 1000)}ms")))
    conn.execute(sql.SQL("set {}statement_timeout = 0").format(scope))  # a backfill may take long; locks may not


def _run_statement_by_statement(conn: Any, migration: Migration, lock_timeout_s: float) -> None:
    import psycopg

    _set_timeouts(conn, lock_timeout_s, local=False)
    try:
        for line, statement in split(migration.sql):
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                raise _StatementFailed(line, statement, exc) from None
    finally:
        if not conn.broken:
            conn.execute("reset lock_timeout")
            conn.execute("reset statement_timeout")


def _record(conn: Any, migration: Migration, started: float) -> None:
    conn.execute(QUERIES["record"], {"version": migration.version, "name": migration.name,
                                     "checksum": migration.checksum, "phase": migration.phase,
                                     "duration_ms": int((time.monotonic() - started) * 1000)})


def _explain(exc: Any, sql_text: str, first_line: int = 1) -> str:
    """The server's message, with the file's line it points at (sql_text starts at first_line) when it says."""
    diag = exc.diag
    line = first_line
    if diag.statement_position:
        line += sql_text[: int(diag.statement_position)].count("\n")
    where = f"line {line}: " if diag.statement_position or first_line > 1 else ""
    text = where + (diag.message_primary or str(exc).strip())
    for extra in (diag.message_detail, diag.message_hint):
        if extra:
            text += f" ({extra})"
    return text
