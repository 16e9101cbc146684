"""The migration files: found by name pattern, each with its version, phase and checksum.

A migration is a file `supabase_sync/sql/migrations/NNNN_[pre_|post_]name.sql`:

* `NNNN`: four digits, unique, applied in ascending order;
* `post_`: a removal that old code cannot live with, applied only after every dispatcher
  runs the release that ships it (docs/dispatcher.md, "Changing the schema");
  `pre_` or no tag: additive, safe to apply while the previous release still runs;
* an optional migration says so in its first line, `-- supabase_sync NNNN (optional...`,
  and is applied only when asked for by version (`migrate --with NNNN`).

Files are append-only: once released, a file never changes (the checksum recorded in the
database would refuse it) and a change is a new file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "sql" / "migrations"

NAME_PATTERN = re.compile(r"^(?P<version>\d{4})_(?:(?P<phase>pre|post)_)?(?P<slug>[a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")
_OPTIONAL_HEADER = re.compile(r"^-- supabase_sync (?P<version>\d{4}) \(optional\b")

Phase = Literal["pre", "post"]


class CatalogError(ValueError):
    """The migrations folder holds something that is not a valid migration; the message names it."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    phase: Phase
    optional: bool
    path: Path
    sql: str
    checksum: str

    def __str__(self) -> str:
        return self.name


def checksum(sql: str) -> str:
    """sha256 of the file's text with CRLF line ends read as LF (a Windows checkout stays the same file)."""
    return hashlib.sha256(sql.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def load(path: Path) -> Migration:
    """One file as a Migration; a name outside the pattern is a CatalogError naming it."""
    match = NAME_PATTERN.match(path.name)
    if not match:
        raise CatalogError(
            f"{path.name}: not a migration name; expected NNNN_name.sql, NNNN_pre_name.sql or NNNN_post_name.sql "
            "(four digits, then lower-case words joined by underscores)"
        )
    sql = path.read_text(encoding="utf-8")
    header = _OPTIONAL_HEADER.match(sql.splitlines()[0] if sql else "")
    if header and header.group("version") != match.group("version"):
        raise CatalogError(f"{path.name}: its first line says it is migration {header.group('version')}")
    return Migration(
        version=match.group("version"),
        name=path.name,
        phase="post" if match.group("phase") == "post" else "pre",
        optional=header is not None,
        path=path,
        sql=sql,
        checksum=checksum(sql),
    )


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every `*.sql` file of the folder, by version; two files with one version are refused."""
    migrations = sorted((load(path) for path in sorted(directory.glob("*.sql"))), key=lambda m: m.version)
    seen: dict[str, str] = {}
    for migration in migrations:
        if migration.version in seen:
            raise CatalogError(f"{seen[migration.version]} and {migration.name} share version {migration.version}: "
                               "renumber one of them (the next free number)")
        seen[migration.version] = migration.name
    if not migrations:
        raise CatalogError(f"{directory}: no migrations found")
    return migrations


def select(migrations: Iterable[Migration], include: Iterable[str] = ()) -> list[Migration]:
    """The required migrations plus the optional ones named in `include` (version or file name), in order."""
    migrations = list(migrations)
    wanted = set(include)
    known = {m.version for m in migrations} | {m.name for m in migrations} | {m.name.removesuffix(".sql") for m in migrations}
    unknown = sorted(wanted - known)
    if unknown:
        raise CatalogError(f"no migration {', '.join(unknown)} (optional ones: "
                           f"{', '.join(m.name for m in migrations if m.optional) or 'none'})")
    return [m for m in migrations
            if not m.optional or wanted & {m.version, m.name, m.name.removesuffix(".sql")}]


def newest_version(migrations: Iterable[Migration]) -> str:
    """The highest version shipped: what a dispatcher reports so `migrate` knows which post migrations it survives."""
    return max(m.version for m in migrations)
