"""The queue's SQL at scale: claim_tasks and queue_stats with 1 M finished rows, and with
1 k, 100 k and 1 M queued rows of one task type and of three.

    .venv/bin/python bench/bench_queue_sql.py [--sizes 1000,100000,1000000] [--finished 1000000] [--no-write]

A throwaway PostgreSQL 15 with durable settings and every migration; each size gets a fresh
database. The previous release's functions (0002's claim_tasks and 0080's queue_stats, created as
*_0002 and *_0080) run beside the current ones on the same rows, so the ratio is measured side by
side. A claim takes 50 rows (CLAIM_BATCH's default); each call runs in a transaction that is
rolled back, so every call sees the same queue (a commit's flush costs the same at any
size); its time is the client's wall time for the call on a local socket. Results go to
docs/benchmarks.md ("Queue SQL") unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.report import write_section  # noqa: E402
from tests.fixtures.pgcluster import start_cluster  # noqa: E402
from tests.fixtures.previous_sql import previous_function_sql  # noqa: E402

TYPES = ["comfy", "vace", "flux"]
CLAIM = "select * from {fn}('bench', 'ep', %s, 50, null, 60)"


def _timed(conn: psycopg.Connection, query: str, params: tuple, runs: int) -> dict[str, float]:
    """Each call in a transaction rolled back: every call sees the same queue."""
    times = []
    with conn.transaction(force_rollback=True):
        conn.execute(query, params).fetchall()  # warm: plan cached
    for _ in range(runs):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            conn.execute(query, params).fetchall()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[min(len(times) - 1, int(0.95 * len(times)))], "n": runs}


def _drop(cluster, conn: psycopg.Connection) -> None:
    name = conn.info.dbname
    conn.close()
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'drop database "{name}" with (force)')


def _database(cluster, name: str) -> psycopg.Connection:
    dsn = cluster.create_database(name)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(previous_function_sql("claim_tasks"))
    conn.execute(previous_function_sql("queue_stats", "0080_pipelines.sql"))  # the last one before 0090
    return conn


def _fill(conn: psycopg.Connection, rows: int, types: list[str], status: str = "queued") -> None:
    # oldest first by created_at, spread over the types; run_after = created_at as for a fresh insert
    conn.execute(
        "insert into tasks (task_type, status, created_at, run_after, completed_at) "
        "select (%s::text[])[1 + i %% %s], %s, now() - make_interval(secs => %s - i), now() - make_interval(secs => %s - i), "
        "case when %s = 'complete' then now() end from generate_series(1, %s) i",
        (types, len(types), status, rows, rows, status, rows))
    conn.execute("vacuum analyze tasks")


def _measure(conn: psycopg.Connection, types: list[str], new_runs: int, old_runs: int) -> dict[str, dict]:
    return {
        "claim": _timed(conn, CLAIM.format(fn="claim_tasks"), (types,), new_runs),
        "claim_0002": _timed(conn, CLAIM.format(fn="claim_tasks_0002"), (types,), old_runs),
        "stats": _timed(conn, "select * from queue_stats()", (), new_runs),
        "stats_0080": _timed(conn, "select * from queue_stats_0080()", (), old_runs),
    }


def _cell(m: dict[str, float]) -> str:
    return f"{m['p50']:.2f} ms (p95 {m['p95']:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started_load = os.getloadavg()[0]
    cluster = start_cluster(durable=True)
    results: list[tuple[str, dict]] = []
    try:
        conn = _database(cluster, "finished")
        _fill(conn, args.finished, ["comfy"], status="complete")
        _fill(conn, 1000, ["comfy"])
        results.append((f"{args.finished:,} finished + 1,000 queued, one type", _measure(conn, ["comfy"], 50, 20)))
        print(results[-1], flush=True)
        _drop(cluster, conn)
        for size in sizes:
            for types in (TYPES[:1], TYPES):
                conn = _database(cluster, f"q{size}_{len(types)}")
                _fill(conn, size, types)
                old_runs = 10 if size >= 1_000_000 else 20
                label = f"{size:,} queued, {'one type' if len(types) == 1 else 'three types'}"
                results.append((label, _measure(conn, types, 50, old_runs)))
                print(results[-1], flush=True)
                _drop(cluster, conn)
    finally:
        cluster.stop()
    rows = "\n".join(
        f"| {label} | **{_cell(m['claim'])}** | {_cell(m['claim_0002'])} | "
        f"**{_cell(m['stats'])}** | {_cell(m['stats_0080'])} |" for label, m in results)
    load = f"1-minute load average {started_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores)"
    body = f"""Command: `.venv/bin/python bench/bench_queue_sql.py --sizes {args.sizes} --finished {args.finished}`.
Machine: {platform.machine()}, Python {platform.python_version()}, 2 cores shared with other engineers' test runs ({load});
run on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC. A throwaway PostgreSQL 15 with durable settings, every
migration applied, the rows made by one INSERT and `VACUUM ANALYZE`d; a fresh database per row of the table.
The previous release's functions (0002's `claim_tasks`, 0080's `queue_stats`) run beside the current ones (0090) on the
same rows. A claim takes 50 rows; each call runs in a transaction that is rolled back, so every call sees the
same queue (the commit's flush, the same at any size, is left out); times are the client's wall time per call,
median and p95 (50 calls of the current functions, 10–20 of the previous ones, after one warm-up call).

| rows | `claim_tasks` (0090) | `claim_tasks` (0002) | `queue_stats` (0090) | `queue_stats` (0080) |
| --- | --- | --- | --- | --- |
{rows}

Target: a claim ≤ 5 ms at 1 M queued rows, with one type and with several. The claim reads one ordered
index range per type (`tasks_claim_order_idx`, `run_after <= now()` ends it) and merges them, so its cost is that
of the 50 rows it takes; 0002's sorted every eligible row. `queue_stats` reads the partial indexes only, so finished
rows cost nothing; counting a million queued rows still means reading a million index entries (it runs per
`/metrics` scrape, not per claim)."""
    print(body)
    if not args.no_write:
        write_section("Queue SQL (claim_tasks, queue_stats)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
