"""`python -m supabase_sync scale [--once] [--dry-run]`: size each routed RunPod endpoint.

    --once      one pass over every endpoint, then exit (0; 1 when an endpoint failed)
    --dry-run   print each decision and its inputs, change nothing (not RunPod, not Supabase)

Settings come from the environment: the dispatcher's (SUPABASE_URL,
SUPABASE_SERVICE_ROLE_KEY, RUNPOD_API_KEY, DISPATCHER_ROUTES or DISPATCHER_ROUTES_FILE,
RUNPOD_API_BASE_URL) and the scaler's (see supabase_sync/scaler/config.py and
docs/scaler.md). A bad setting exits with code 2 before anything is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from supabase_sync.config import ConfigError
from supabase_sync.scaler.config import ScalerSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supabase_sync scale",
        description="Set each RunPod endpoint's workers.min/max from its Supabase queue and /health.",
    )
    parser.add_argument("--once", action="store_true", help="run one pass over every endpoint, then exit")
    parser.add_argument("--dry-run", action="store_true", help="print each decision and its inputs; change nothing")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of the `scale` subcommand; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = ScalerSettings.from_env(os.environ)
    except (ConfigError, ValueError) as exc:
        print(f"supabase_sync scale: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request, every pass: too much
    return asyncio.run(_run(settings, once=args.once, dry_run=args.dry_run))


async def _run(settings: ScalerSettings, *, once: bool, dry_run: bool) -> int:
    # Imported here: the configuration is checked before the clients are loaded.
    from supabase_sync.runpod_api import RunPodClient
    from supabase_sync.scaler.runpod_management import RunpodManagementClient
    from supabase_sync.scaler.service import PassResult, Scaler, SupabaseDecisionLog, SupabaseQueueCounts, describe
    from supabase_sync.store import TaskStore

    def print_decision(result: PassResult) -> None:
        print(describe(result), flush=True)

    dispatcher = settings.dispatcher
    store = await TaskStore.connect(dispatcher.supabase_url, dispatcher.supabase_key, max_connections=4)
    runpod = RunPodClient(dispatcher.runpod_api_key, dispatcher.runpod_api_base_url)
    management = RunpodManagementClient(dispatcher.runpod_api_key, base_url=settings.management_url)
    scaler = Scaler(
        settings.endpoints,
        SupabaseQueueCounts(store.client),
        runpod,
        management,
        dry_run=dry_run,
        listeners=[print_decision] if dry_run else [],
        decision_log=SupabaseDecisionLog(store.client),
    )
    log = logging.getLogger("supabase_sync.scaler")
    try:
        if once:
            results = await scaler.run_pass()
            return 1 if any(r.outcome in ("apply_failed", "observe_failed") for r in results) else 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("scaler%s: %s; a pass every %ss", " (dry run)" if dry_run else "",
                 ", ".join(f"{e.endpoint_id} <- {'/'.join(e.task_types)}" for e in settings.endpoints),
                 settings.interval_s)
        await scaler.run_forever(settings.interval_s, stop)
        log.info("scaler stopped")
        return 0
    finally:
        await management.aclose()
        await runpod.aclose()
        await store.aclose()
