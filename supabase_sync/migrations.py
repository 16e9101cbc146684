"""Where the SQL migrations live, in the order they are applied."""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "sql" / "migrations"
# 0003 needs pg_net and is optional; the others are required, in this order.
REQUIRED = (
    "0001_schema.sql",
    "0002_functions.sql",
    "0050_scaler.sql",  # scaler (issue 6): the queue counts `python -m supabase_sync scale` reads
    "0080_pipelines.sql",  # pipelines (issue 13): depends_on, the 'waiting' status, dependency_outputs
    "0081_workflow_templates.sql",  # templates (issue 13): the workflow_templates table and its functions
)
OPTIONAL_TRIGGER = "0003_trigger_pg_net.sql"


def migration_files(include_trigger: bool = False) -> list[Path]:
    """The migration files to apply with psql, in order."""
    names = list(REQUIRED) + ([OPTIONAL_TRIGGER] if include_trigger else [])
    return [MIGRATIONS_DIR / name for name in names]
