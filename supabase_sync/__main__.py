"""python -m supabase_sync [COMMAND]

    run (default)     the dispatcher: settings from the environment (docs/dispatcher.md)
    migrate           apply the pending migrations to DATABASE_URL and record them
                      [--dry-run] [--pre] [--with NNNN ...] [--lock-timeout SECONDS]
    sql               print the migrations in order, for psql [--with-trigger: the optional ones too]
    supabase-layout   write the migrations in the Supabase CLI's layout [--check] [DIR, default ./supabase]
    check-config      validate the environment and print the routes, then exit
    scale             the endpoint scaler: workers.min/max from the queue (docs/scaler.md)
    templates         workflow templates: list | show NAME | schema NAME | render NAME --args '{...}' | publish FILE
    healthcheck       exit 0 when this host's dispatcher answers GET /health with 200 (the image's HEALTHCHECK)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from supabase_sync.config import ConfigError, Settings


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "run"
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    handlers = {"migrate": _migrate, "sql": _sql, "supabase-layout": _supabase_layout, "healthcheck": _healthcheck}
    if command in handlers:
        return handlers[command](argv[1:])
    if command == "scale":  # the endpoint scaler (issue 6): supabase_sync/scaler/cli.py
        from supabase_sync.scaler.cli import main as scale_main

        return scale_main(argv[1:])
    if command == "templates":  # workflow templates (issue 13): supabase_sync/templates/cli.py
        from supabase_sync.templates.cli import main as templates_main

        return templates_main(argv[1:])
    if command not in ("run", "check-config"):
        print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"supabase_sync: configuration error: {exc}", file=sys.stderr)
        return 2
    if command == "check-config":
        for route in settings.routing.routes:
            print(f"{', '.join(route.task_types)} -> endpoint {route.endpoint_id} ({route.kind}, "
                  f"max {route.max_in_flight} in flight, policy {route.policy()})")
        print(f"unknown task types: {settings.routing.unknown_task_types}")
        print(f"claims: up to {settings.claim_batch} per call (CLAIM_BATCH), within Supabase's Max rows "
              f"{settings.max_rows} (SUPABASE_MAX_ROWS)")
        print(f"webhooks: {'on, ' + settings.public_url if settings.public_url else 'off (status polling only)'}")
        print(f"wake-up: {settings.wakeup_description()}")
        missing = [str(path) for path in settings.template_dirs if not path.is_dir()]
        if missing:
            print(f"supabase_sync: configuration error: WORKFLOW_TEMPLATE_DIRS: not a folder: {', '.join(missing)}",
                  file=sys.stderr)
            return 2
        print(f"templates: {', '.join(map(str, settings.template_dirs)) or 'no folders'}, then the workflow_templates table "
              f"(python -m supabase_sync templates list)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from supabase_sync.service import StartupError, serve  # after the config check: imports uvicorn, supabase

    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"supabase_sync: {exc}", file=sys.stderr)
        return 2
    return 0


def _migrate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m supabase_sync migrate",
                                     description="Apply the pending migrations to DATABASE_URL, each in its own "
                                                 "transaction, and record them (docs/dispatcher.md).")
    parser.add_argument("--dry-run", action="store_true", help="show what is applied and what would be; change nothing")
    parser.add_argument("--pre", action="store_true",
                        help="stop before the first post migration (before a rolling deploy of a new release)")
    parser.add_argument("--with", dest="include", action="append", default=[], metavar="NNNN",
                        help="also apply this optional migration (e.g. 0003, the pg_net trigger); repeatable")
    parser.add_argument("--lock-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long one migration waits for a table lock before it lets other queries "
                             "through and tries again (default 5)")
    args = parser.parse_args(argv)
    from supabase_sync.database import DatabaseUrlError, check_url, describe
    from supabase_sync.migrations import CatalogError
    from supabase_sync.migrations.runner import MigrationError, migrate

    url = os.environ.get("DATABASE_URL", "")
    if not url:
        print("supabase_sync migrate: DATABASE_URL is not set (the database owner's connection string: Supabase "
              "dashboard > Connect > direct connection or session pooler)", file=sys.stderr)
        return 2
    try:
        check_url(url)
    except DatabaseUrlError as exc:
        print(f"supabase_sync migrate: {exc}", file=sys.stderr)
        return 2
    import psycopg

    try:
        result = migrate(url, include=args.include, pre_only=args.pre, dry_run=args.dry_run,
                         lock_timeout_s=args.lock_timeout, report=lambda line: print(line, flush=True))
    except (MigrationError, CatalogError) as exc:
        print(f"supabase_sync migrate: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:  # cannot connect, no privilege: say where
        print(f"supabase_sync migrate: {describe(url)}: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 3 if result.blocked_by else 0


def _sql(argv: list[str]) -> int:
    from supabase_sync.migrations import migration_files

    sys.stdout.write("-- supabase_sync migrations for psql. `python -m supabase_sync migrate` applies the same files\n"
                     "-- and records them; with psql nothing is recorded.\n")
    for path in migration_files(include_trigger="--with-trigger" in argv):
        sys.stdout.write(f"-- {path.name}\n{path.read_text()}\n")
    return 0


def _supabase_layout(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m supabase_sync supabase-layout",
                                     description="The migrations as supabase/migrations/<timestamp>_<name>.sql "
                                                 "(optional ones in supabase/optional-migrations/).")
    parser.add_argument("root", nargs="?", default="supabase", type=Path, help="the supabase/ folder (default ./supabase)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 and name every difference")
    args = parser.parse_args(argv)
    from supabase_sync.migrations import discover
    from supabase_sync.migrations.supabase_cli import layout_problems, write_layout

    if args.check:
        problems = layout_problems(discover(), args.root)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for path in write_layout(discover(), args.root):
        print(f"wrote {path}")
    return 0


def _healthcheck(argv: list[str]) -> int:
    import urllib.request

    port = os.environ.get("DISPATCHER_PORT") or "8080"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:  # URLError and HTTPError (503) are OSErrors
        print(f"supabase_sync healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
