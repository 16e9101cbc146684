"""A migration file as statements, and whether it can run inside a transaction.

Most migrations run in one transaction with their record (runner.py). PostgreSQL refuses a
few commands inside a transaction block: CREATE/DROP INDEX CONCURRENTLY, REINDEX ...
CONCURRENTLY, VACUUM, CREATE DATABASE, ALTER SYSTEM. A file with one of them runs as psql
runs a file: statement by statement, each committed on its own (0080_pipelines.sql builds an
index CONCURRENTLY, so that inserts go on while it is built).

Statements are split by sqlparse's lexer, which knows quotes, dollar-quoted bodies and
comments (a `;` inside a function body does not end a statement). Imported by the runner
only: the dispatcher itself never needs it.
"""

from __future__ import annotations

import re

_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_OUTSIDE_A_TRANSACTION = re.compile(
    r"^(create\s+(unique\s+)?index\s+concurrently|drop\s+index\s+concurrently|reindex\b.*\bconcurrently\b"
    r"|vacuum\b|create\s+database\b|alter\s+system\b)",
    re.IGNORECASE | re.DOTALL,
)


def split(sql: str) -> list[tuple[int, str]]:
    """(line where its code starts, its text from there) for every statement of the file; comments
    before a statement are left out, and so are pieces that are only comments."""
    import sqlparse

    found, offset = [], 0
    for piece in sqlparse.split(sql):
        start = sql.find(piece, offset)
        start = offset if start < 0 else start
        offset = start + len(piece)
        code = _LEADING_COMMENTS.match(piece).end()
        if code < len(piece):
            found.append((sql.count("\n", 0, start + code) + 1, piece[code:]))
    return found


def runs_outside_a_transaction(sql: str) -> bool:
    """True when a statement of the file cannot run inside a transaction block."""
    import sqlparse

    return any(_OUTSIDE_A_TRANSACTION.match(sqlparse.format(statement, strip_comments=True).strip())
               for _, statement in split(sql))
