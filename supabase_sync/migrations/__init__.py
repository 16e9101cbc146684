"""The schema's migrations: the files (catalog), applying them (runner), the Supabase CLI layout (supabase_cli)."""

from __future__ import annotations

from pathlib import Path

from supabase_sync.migrations.catalog import MIGRATIONS_DIR, CatalogError, Migration, discover, select

__all__ = ["MIGRATIONS_DIR", "CatalogError", "Migration", "discover", "select", "migration", "migration_files",
           "optional_migrations"]


def migration_files(include_trigger: bool = False) -> list[Path]:
    """The files to apply with psql, in order: the required ones, and with include_trigger the optional ones too."""
    every = discover()
    return [m.path for m in (every if include_trigger else select(every))]


def optional_migrations() -> list[Migration]:
    """The optional migrations (today: 0003 and 0092, the pg_net triggers)."""
    return [m for m in discover() if m.optional]


def migration(version: str) -> Migration:
    """The migration with this version (e.g. "0003"); a CatalogError when there is none."""
    found = [m for m in discover() if m.version == version]
    if not found:
        raise CatalogError(f"no migration {version}")
    return found[0]
