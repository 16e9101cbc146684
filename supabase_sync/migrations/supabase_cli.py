"""The same migrations in the Supabase CLI's layout, for `supabase db push` users.

    <root>/migrations/<YYYYMMDDHHMMSS>_<NNNN_name>.sql            required migrations
    <root>/optional-migrations/<YYYYMMDDHHMMSS>_<NNNN_name>.sql   optional ones (copy into migrations/ to use)

Each file is byte for byte the package's file. The CLI applies files in timestamp order
and records each timestamp once applied, so a timestamp, once written, is kept: a new
migration gets the current time (or, when it is numbered below one already laid out,
a time between its neighbours), and the timestamps always follow the version order.
The optional ones stay out of migrations/ because `supabase db push` applies every file
there, and the pg_net trigger stops when pg_net is not enabled.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from supabase_sync.migrations.catalog import NAME_PATTERN, Migration

REQUIRED_DIR = "migrations"
OPTIONAL_DIR = "optional-migrations"
_CLI_NAME = re.compile(r"^(?P<stamp>\d{14})_(?P<name>.+\.sql)$")
_STAMP = "%Y%m%d%H%M%S"
REGENERATE = "python -m supabase_sync supabase-layout"


def _subdir(migration: Migration) -> str:
    return OPTIONAL_DIR if migration.optional else REQUIRED_DIR


def _laid_out(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """Migration file name -> [(timestamp, path)] of every CLI file of ours under root."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for sub in (REQUIRED_DIR, OPTIONAL_DIR):
        for path in sorted((root / sub).glob("*.sql")):
            match = _CLI_NAME.match(path.name)
            if match and NAME_PATTERN.match(match.group("name")):  # a user's own migrations are not ours
                found.setdefault(match.group("name"), []).append((match.group("stamp"), path))
    return found


def layout_problems(migrations: Iterable[Migration], root: Path) -> list[str]:
    """Every way the CLI layout under root differs from the package's migrations (empty: identical)."""
    migrations = list(migrations)
    laid_out = _laid_out(root)
    problems = []
    stamps: list[tuple[str, str]] = []
    for migration in migrations:
        files = laid_out.pop(migration.name, [])
        if len(files) != 1:
            problems.append(f"{migration.name}: {len(files)} files in the Supabase CLI layout "
                            f"({', '.join(str(p.relative_to(root)) for _, p in files) or 'none'}); expected one in "
                            f"{_subdir(migration)}/")
            continue
        stamp, path = files[0]
        if path.parent.name != _subdir(migration):
            problems.append(f"{path.relative_to(root)}: belongs in {_subdir(migration)}/")
        if path.read_bytes() != migration.path.read_bytes():
            problems.append(f"{path.relative_to(root)} differs from supabase_sync/sql/migrations/{migration.name}")
        stamps.append((stamp, migration.name))
    for name, files in laid_out.items():
        problems += [f"{path.relative_to(root)}: no migration {name} in the package" for _, path in files]
    for (earlier, first), (later, second) in zip(stamps, stamps[1:]):
        if later <= earlier:
            problems.append(f"{second} is timestamped {later}, not after {first} ({earlier}): the CLI would apply "
                            "them out of order")
    return [f"{problem} (fix: {REGENERATE})" for problem in problems]


def write_layout(migrations: Iterable[Migration], root: Path, now: datetime | None = None) -> list[Path]:
    """Write the missing (or differing) CLI files under root; existing timestamps are kept. Returns what was written."""
    migrations = list(migrations)
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0, tzinfo=None)
    laid_out = _laid_out(root)
    stamps: dict[str, datetime] = {}
    for migration in migrations:
        if laid_out.get(migration.name):
            stamps[migration.name] = datetime.strptime(min(laid_out[migration.name])[0], _STAMP)
    written = []
    for index, migration in enumerate(migrations):
        if migration.name not in stamps:
            earlier = [stamps[m.name] for m in migrations[:index] if m.name in stamps]
            later = [stamps[m.name] for m in migrations[index + 1:] if m.name in stamps]
            floor = max(earlier) + timedelta(seconds=1) if earlier else now
            stamp = max(floor, now) if not later or max(floor, now) < min(later) else floor
            if later and stamp >= min(later):
                raise ValueError(f"{migration.name}: no free second between its neighbours in the CLI layout")
            stamps[migration.name] = stamp
        target = root / _subdir(migration) / f"{stamps[migration.name].strftime(_STAMP)}_{migration.name}"
        for _, old in laid_out.get(migration.name, []):
            if old != target:
                old.unlink()  # in the wrong folder, or a duplicate
        if not target.exists() or target.read_bytes() != migration.path.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(migration.path.read_bytes())
            written.append(target)
    return written
