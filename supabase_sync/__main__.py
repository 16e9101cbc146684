"""python -m supabase_sync [run | sql [--with-trigger] | check-config | scale [--once] [--dry-run] | templates ...]

    run (default)   the dispatcher: settings from the environment (docs/dispatcher.md)
    sql             print the migrations in order, e.g. `python -m supabase_sync sql | psql "$DATABASE_URL"`
    check-config    validate the environment and print the routes, then exit
    scale           the endpoint scaler: workers.min/max from the queue (docs/scaler.md)
    templates       workflow templates: list | show NAME | schema NAME | render NAME --args '{...}' | publish FILE
"""

from __future__ import annotations

import asyncio
import logging
import sys

from supabase_sync.config import ConfigError, Settings
from supabase_sync.migrations import migration_files


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "run"
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if command == "sql":
        for path in migration_files(include_trigger="--with-trigger" in argv):
            sys.stdout.write(f"-- {path.name}\n{path.read_text()}\n")
        return 0
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
        print(f"webhooks: {'on, ' + settings.public_url if settings.public_url else 'off (status polling only)'}")
        missing = [str(path) for path in settings.template_dirs if not path.is_dir()]
        if missing:
            print(f"supabase_sync: configuration error: WORKFLOW_TEMPLATE_DIRS: not a folder: {', '.join(missing)}",
                  file=sys.stderr)
            return 2
        print(f"templates: {', '.join(map(str, settings.template_dirs)) or 'no folders'}, then the workflow_templates table "
              f"(python -m supabase_sync templates list)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from supabase_sync.service import serve  # after the config check: imports uvicorn, supabase

    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
