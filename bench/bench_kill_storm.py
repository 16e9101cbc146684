"""The long kill storm: 1,000 tasks, three `python -m supabase_sync` processes, one SIGKILLed
every 0.5-2 s for the length of the storm; RunPod answers /run 429 (5 %), 500 before making the
job (3 %) and 500 AFTER making it (5 %); 10 % of the tasks fail their first execution; 20 % of
the webhooks are lost; the API answers 503 for 2 s and PostgreSQL is restarted once. Workers
run each job through the real start fence. This checkout beside a baseline commit, in one run.

    .venv/bin/python bench/bench_kill_storm.py [--tasks 1000] [--storm-s 30] [--baseline main] [--no-write]

The CI-sized version is tests/supabase_sync/test_kill_storm.py (200 tasks). Counts, per
version: tasks not complete (lost, stuck, or failed though only their claimers died), tasks
whose workflow ran more often than their own failures explain, tasks whose attempts differ
from their executions, results that are not the last execution's, and updates of a row that
was already final. Results go to docs/benchmarks.md ("Kill storm") unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_dispatcher import Version, baseline  # noqa: E402
from bench.report import write_section  # noqa: E402
from tests.doubles.postgrest import PostgrestDouble  # noqa: E402
from tests.doubles.runpod_emulator import RunPodEmulator  # noqa: E402
from tests.fixtures.pgcluster import start_cluster  # noqa: E402
from tests.fixtures.postgres import Database  # noqa: E402
from tests.supabase_sync.storm import run_storm  # noqa: E402


def storm(cluster, logs: Path, version: Version, tag: str, tasks: int, storm_s: float):
    name = f"storm_{tag}"
    cluster.create_database(name, with_migrations=False)
    for path in version.migrations():
        done = cluster.psql_file(path, dbname=name)
        assert done.returncode == 0, f"{path.name}: {done.stderr}"
    db = Database(cluster, name, PostgrestDouble(cluster.dsn(user="authenticator", dbname=name)).start())
    emulator = RunPodEmulator(webhook_retry_delay_s=0.2, job_take_wait_s=0.5).start()
    (logs / tag).mkdir()
    try:
        return run_storm(db, emulator, logs / tag, tasks=tasks, waves=max(1, tasks // 50), storm_s=storm_s,
                         settle_s=300, cwd=version.root)
    finally:
        emulator.stop()
        db.postgrest.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--storm-s", type=float, default=30.0)
    parser.add_argument("--baseline", default="main", help="the commit to compare with ('' for none)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    logs = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    versions = [Version("this checkout", ROOT, fence=True)]
    if args.baseline:
        (logs / "baseline-src").mkdir()
        versions.append(baseline(args.baseline, logs / "baseline-src"))
    cluster = start_cluster(durable=True)
    results = {}
    try:
        for n, version in enumerate(versions):
            results[version.name] = storm(cluster, logs, version, f"v{n}", args.tasks, args.storm_s)
            r = results[version.name]
            print(version.name, {k: len(v) for k, v in r.problems.items()}, "kills", r.kills, "submissions",
                  len(r.submissions), "executions", r.executed, "refused", r.refused, "faults", r.faults,
                  f"{r.seconds:.0f} s", flush=True)
    finally:
        cluster.stop()
    names = list(results)
    rows = [
        ("tasks not complete (lost, stuck, or failed only because their claimers died)", "not_complete"),
        ("tasks whose workflow ran more often than their own failures explain", "executed_twice"),
        ("tasks whose attempts differ from their executions (attempts spent by deaths)", "attempts_not_executions"),
        ("tasks whose kept result is not their last execution's", "result_not_last_execution"),
        ("updates of a row that was already final (states overwritten)", "overwritten"),
    ]
    table = ["| | " + " | ".join(f"**{n}**" if i == 0 else n for i, n in enumerate(names)) + " |",
             "| --- |" + " --- |" * len(names)]
    table += [f"| {label} | " + " | ".join(str(len(results[n].problems[key])) for n in names) + " |" for label, key in rows]
    table.append("| dispatcher kills · `/run` jobs made · workflows executed · jobs refused by the fence | " + " | ".join(
        f"{results[n].kills} · {len(results[n].submissions)} · {results[n].executed} · {results[n].refused}" for n in names) + " |")
    table.append("| faults injected (`429`, `500_before`, `500_after`, `webhook_lost`) | " + " | ".join(
        ", ".join(f"{results[n].faults.get(k, 0)}" for k in ("429", "500_before", "500_after", "webhook_lost"))
        for n in names) + " |")
    table.append("| until every task was final | " + " | ".join(f"{results[n].seconds:.0f} s" for n in names) + " |")
    body = f"""Command: `.venv/bin/python bench/bench_kill_storm.py --tasks {args.tasks} --storm-s {args.storm_s:g} --baseline {args.baseline}`.
Machine: {platform.machine()}, Python {platform.python_version()}, 2 cores shared with other engineers' test runs (load average
{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); run on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC.
{args.tasks} tasks arrive 50 a second; for {args.storm_s:g} s one of three `python -m supabase_sync` processes is SIGKILLed
every 0.5–2 s and started again at once; `/run` answers 429 (5 %), 500 before making the job (3 %) and 500 after making
it (5 %); every 10th task's first execution fails (retryable); 20 % of webhooks are never sent; the API answers 503 for
2 s and PostgreSQL is restarted once. Workers (8, scripted) run each job through the real start fence
(`comfy/worker/fence.py`); with the baseline, whose jobs carry no lease token, the fence lets every job run. The same
code is `tests/supabase_sync/storm.py`, run by the CI test with 200 tasks.

{chr(10).join(table)}"""
    print(body)
    print(f"logs: {logs}")
    if not args.no_write:
        write_section("Kill storm", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
