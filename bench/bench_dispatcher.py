"""Dispatcher benchmarks, this checkout beside a baseline release, in one run:

* INSERT -> RunPod /run latency (p50/p95/p99) at a steady rate: woken through LISTEN/NOTIFY
  (DATABASE_URL), through the pg_net trigger, and by polling only;
* the most tasks/s claimed and submitted by 1 and by 2 dispatchers (a burst inserted at once);
* SQL calls (RPCs) per task over a task's whole life: claim, submit, a worker starting and
  finishing it (with this checkout, through the start fence), the webhook's write-back.

    .venv/bin/python bench/bench_dispatcher.py [--rate 50] [--seconds 20] [--tasks 2000]
        [--life-tasks 500] [--baseline main] [--rounds 2] [--no-write]

Runs on this machine only: a throwaway PostgreSQL 15 (durable: fsync and synchronous_commit
on), the PostgREST RPC double and the RunPod emulator in this process, the pg_net double for
the trigger, and the dispatchers as real `python -m supabase_sync` processes. The baseline is
another commit's supabase_sync (extracted with `git archive`) with that commit's migrations,
on its own databases in the same cluster. Latency is the emulator's wall-clock receipt of
/run minus the INSERT's commit. Results go to docs/benchmarks.md ("Dispatcher") unless
--no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from comfy.worker.fence import TaskFence  # noqa: E402
from comfy.worker.supabase_rpc import SupabaseRpc  # noqa: E402
from tests.comfy_env import free_port  # noqa: E402
from tests.doubles.pg_net import PgNetBridge  # noqa: E402
from tests.doubles.postgrest import PostgrestDouble, make_key  # noqa: E402
from tests.doubles.runpod_emulator import RunPodEmulator, ScriptedWorker  # noqa: E402
from tests.fixtures.pgcluster import PG_NET_STUB_SQL, start_cluster  # noqa: E402
from tests.supabase_sync.harness import DispatcherProcess, dispatcher_env, wait_for_sync  # noqa: E402

ENDPOINT = "bench-endpoint"
PARAMS = json.dumps({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}})
TRIGGER_FILE = "0003_trigger_pg_net.sql"
# RPCs made by time (every POLL_INTERVAL or HEARTBEAT_INTERVAL), not by task
PERIODIC = frozenset({"quarantine_malformed_tasks", "requeue_expired_leases", "requeue_lost_claims", "take_due_polls", "take_pending_cancels",
                      "fail_unroutable", "heartbeat"})


@dataclass
class Version:
    """The dispatcher to run: its source tree and the migrations that go with it."""

    name: str
    root: Path
    fence: bool  # whether its job input carries a lease token for the worker's start fence

    def migrations(self) -> list[Path]:
        """The required ones, in order (an optional one says so in its first line)."""
        folder = self.root / "supabase_sync" / "sql" / "migrations"
        return sorted(p for p in folder.glob("*.sql")
                      if "(optional" not in p.read_text().split("\n", 1)[0] and p.name != "0003_trigger_pg_net.sql")

    @property
    def listens(self) -> bool:
        """Whether this version has the LISTEN wake-up (DATABASE_URL)."""
        return (self.root / "supabase_sync" / "listener.py").exists()


def baseline(commit: str, into: Path) -> Version:
    """`commit`'s supabase_sync, extracted next to nothing else (its code and its SQL)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "supabase_sync"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return Version(f"baseline {commit}", into, fence=False)


class _Db:
    def __init__(self, cluster, name: str, version: Version) -> None:
        import psycopg

        self.cluster, self.name = cluster, name
        self.dsn = cluster.create_database(name, with_migrations=False)
        for path in version.migrations():
            done = cluster.psql_file(path, dbname=name)
            assert done.returncode == 0, f"{path.name}: {done.stderr}"
        self.postgrest = PostgrestDouble(cluster.dsn(user="authenticator", dbname=name)).start()
        self.url = self.postgrest.url
        self.service_key = make_key("service_role")
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def insert(self, count: int = 1) -> tuple[list[str], float]:
        """Insert `count` queued tasks in one statement; their ids and the wall time at commit."""
        rows = self.conn.execute("insert into tasks (task_type, params) select 'comfy', %s "
                                 "from generate_series(1, %s) returning task_id", (PARAMS, count)).fetchall()
        return [str(r[0]) for r in rows], time.time()

    def close(self) -> None:
        self.postgrest.stop()
        self.conn.close()


def _routes(logs: Path, tasks: int) -> Path:
    # nothing finishes in the latency and burst runs: the in-flight limit must not be what stops them
    path = logs / f"routes-{tasks}.json"
    path.write_text(json.dumps({"routes": [{"endpoint_id": ENDPOINT, "task_types": ["comfy"],
                                            "max_in_flight": tasks * 2}]}))
    return path


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"n": len(values), "p50": statistics.median(ordered) * 1000, "p95": pick(0.95), "p99": pick(0.99),
            "max": ordered[-1] * 1000}


def _start(version: Version, db: _Db, emulator: RunPodEmulator, logs: Path, name: str, **extra: str) -> DispatcherProcess:
    env = dispatcher_env(db, emulator, int(extra.pop("port", free_port())), DISPATCHER_ID=name, **extra)
    return DispatcherProcess(env, logs / f"{name}.log", cwd=version.root).start()


def latency(cluster, logs: Path, version: Version, tag: str, wakeup: str, rate: float, seconds: float) -> dict | None:
    """Tasks inserted one at a time at `rate` per second (open loop: on a schedule), the dispatcher
    woken by `wakeup`: 'listen', 'pg_net' or 'poll' (POLL_INTERVAL=1). None: the version has no such wake-up."""
    if wakeup == "listen" and not version.listens:
        return None
    trigger = wakeup == "pg_net"
    tasks = int(rate * seconds)
    db = _Db(cluster, f"latency_{tag}", version)
    emulator = RunPodEmulator().start()
    bridge = None
    port = free_port()
    if trigger:
        db.conn.execute(PG_NET_STUB_SQL)
        done = cluster.psql_file(version.root / "supabase_sync" / "sql" / "migrations" / TRIGGER_FILE, dbname=db.name)
        assert done.returncode == 0, done.stderr
        db.conn.execute("insert into dispatcher_wakeup (url, secret) values (%s, 'bench-trigger')",
                        (f"http://127.0.0.1:{port}/hooks/supabase",))
        bridge = PgNetBridge(db.dsn).start()
    woken = {"DATABASE_URL": db.dsn} if wakeup == "listen" else {}
    dispatcher = _start(version, db, emulator, logs, f"latency-{tag}", port=str(port), DISPATCHER_ROUTES="",
                        DISPATCHER_ROUTES_FILE=str(_routes(logs, tasks)),
                        POLL_INTERVAL="1" if wakeup == "poll" else "5", TRIGGER_SECRET="bench-trigger",
                        CLAIM_LEASE_S="60", STATUS_CHECK_INTERVAL="600", **woken)
    committed: dict[str, float] = {}
    try:
        time.sleep(1.0)
        start = time.monotonic()
        for i in range(tasks):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            [task_id], at = db.insert()
            committed[task_id] = at
        wait_for_sync(lambda: len(emulator.submissions) >= tasks, timeout_s=60, interval_s=0.01, what="all submitted")
        submitted = {job.input["task_id"]: job.submitted_wall for job in emulator.submissions}
    finally:
        dispatcher.terminate()
        if bridge:
            bridge.stop()
        emulator.stop()
        db.close()
    return _percentiles([submitted[t] - at for t, at in committed.items()])


def throughput(cluster, logs: Path, version: Version, tag: str, tasks: int, dispatchers: int) -> dict:
    db = _Db(cluster, f"burst_{tag}_{dispatchers}", version)
    emulator = RunPodEmulator().start()
    routes = _routes(logs, tasks)
    procs = []
    try:
        for n in range(dispatchers):
            procs.append(_start(version, db, emulator, logs, f"burst-{tag}-{dispatchers}-{n}", DISPATCHER_ROUTES="",
                                DISPATCHER_ROUTES_FILE=str(routes), POLL_INTERVAL="0.05", CLAIM_LEASE_S="60",
                                STATUS_CHECK_INTERVAL="600", CLAIM_BATCH="100"))
        time.sleep(1.0)
        _, started = db.insert(tasks)
        wait_for_sync(lambda: len(emulator.submissions) >= tasks, timeout_s=300, interval_s=0.01, what="all submitted")
        finished = max(job.submitted_wall for job in emulator.submissions)
        time.sleep(0.5)  # anything submitted twice would show up now
        submitted = [job.input["task_id"] for job in emulator.submissions]
        attached = db.conn.execute("select count(*) from tasks where runpod_job_id is not null").fetchone()[0]
        calls = dict(db.postgrest.calls_by_function)
    finally:
        for proc in procs:
            proc.terminate()
        emulator.stop()
        db.close()
    return {"tasks": tasks, "seconds": finished - started, "tasks_per_s": tasks / (finished - started),
            "duplicates": len(submitted) - len(set(submitted)), "attached": attached,
            "claims": calls.get("claim_tasks", 0), "attaches": calls.get("attach_runpod_jobs", 0)}


def sql_calls_per_task(cluster, logs: Path, version: Version, tag: str, tasks: int) -> dict:
    """A task's whole life, with a worker that (for this checkout) calls start_task first."""
    db = _Db(cluster, f"life_{tag}", version)
    emulator = RunPodEmulator(webhook_retry_delay_s=0.2, job_take_wait_s=0.5).start()
    fence = TaskFence(SupabaseRpc(db.url, db.service_key)) if version.fence else None
    output = {"outputs": [{"node_id": "2", "kind": "image", "url": "https://cdn.test/x.png"}]}
    worker = ScriptedWorker(emulator, ENDPOINT, lambda i, p: output, concurrency=8,
                            before_run=(lambda i, j: fence.check(i, j)) if fence else None).start()
    dispatcher = _start(version, db, emulator, logs, f"life-{tag}", DISPATCHER_ROUTES="",
                        DISPATCHER_ROUTES_FILE=str(_routes(logs, tasks)), POLL_INTERVAL="0.2",
                        STATUS_CHECK_INTERVAL="30", CLAIM_LEASE_S="60", HEARTBEAT_INTERVAL="15")
    try:
        time.sleep(1.0)
        before = dict(db.postgrest.calls_by_function)
        started = time.monotonic()
        db.insert(tasks)
        wait_for_sync(lambda: db.conn.execute("select count(*) from tasks where status = 'complete'").fetchone()[0]
                      == tasks, timeout_s=300, interval_s=0.05, what="all complete")
        seconds = time.monotonic() - started
        after = dict(db.postgrest.calls_by_function)
    finally:
        dispatcher.terminate()
        worker.stop()
        emulator.stop()
        db.close()
    calls = {fn: n - before.get(fn, 0) for fn, n in after.items() if n - before.get(fn, 0)}
    per_task = {fn: n / tasks for fn, n in calls.items() if fn not in PERIODIC}
    periodic = {fn: n / seconds for fn, n in calls.items() if fn in PERIODIC}
    return {"tasks": tasks, "seconds": seconds, "per_task": sum(per_task.values()),
            "by_function": {fn: round(n, 3) for fn, n in sorted(per_task.items(), key=lambda kv: -kv[1])},
            "periodic_per_s": round(sum(periodic.values()), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="tasks/s in the latency runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each latency run")
    parser.add_argument("--tasks", type=int, default=2000, help="burst size of the throughput runs")
    parser.add_argument("--life-tasks", type=int, default=500)
    parser.add_argument("--baseline", default="main", help="the commit to compare with ('' for none)")
    parser.add_argument("--rounds", type=int, default=2, help="samples of each latency and burst measurement")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.load_before = _load()
    logs = Path(tempfile.mkdtemp(prefix="bench-dispatcher-"))
    versions = [Version("this checkout", ROOT, fence=True)]
    if args.baseline:
        (logs / "baseline").mkdir()
        versions.append(baseline(args.baseline, logs / "baseline"))
    cluster = start_cluster(durable=True)
    results: dict[str, dict] = {v.name: {} for v in versions}
    measurements = {
        "listen": lambda v, tag: latency(cluster, logs, v, tag, "listen", args.rate, args.seconds),
        "trigger": lambda v, tag: latency(cluster, logs, v, tag, "pg_net", args.rate, args.seconds),
        "polling": lambda v, tag: latency(cluster, logs, v, tag, "poll", args.rate, args.seconds),
        "burst1": lambda v, tag: throughput(cluster, logs, v, tag, args.tasks, 1),
        "burst2": lambda v, tag: throughput(cluster, logs, v, tag, args.tasks, 2),
    }
    try:
        # Versions alternate, first one then the other, so a machine that gets busier or quieter
        # during the run does not favour either column.
        for round_ in range(args.rounds):
            for m, (name, measure) in enumerate(measurements.items()):
                order = versions if (round_ + m) % 2 == 0 else versions[::-1]
                for version in order:
                    n = versions.index(version)
                    sample = measure(version, f"{name}_r{round_}_v{n}")
                    if sample is not None:
                        sample["load"] = _load()  # the 1-minute load average as the sample ended
                    results[version.name].setdefault(name, []).append(sample)
                    print(version.name, name, sample, flush=True)
        for n, version in enumerate(versions):
            results[version.name]["life"] = sql_calls_per_task(cluster, logs, version, f"v{n}", args.life_tasks)
            results[version.name]["life"]["load"] = _load()
            print(version.name, "life", results[version.name]["life"], flush=True)
    finally:
        cluster.stop()
    print(f"dispatcher logs: {logs}")
    body = _report(args, versions, results)
    print(body)
    if not args.no_write:
        write_section("Dispatcher", body)
    return 0


def _commit(ref: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True).stdout.strip()


def _load() -> float:
    return os.getloadavg()[0]


def _lat(samples: list[dict | None]) -> str:
    if any(m is None for m in samples):
        return "(no such wake-up)"
    return "; ".join(f"p50 {m['p50']:.1f}, p95 {m['p95']:.1f}, p99 {m['p99']:.1f} ms (load {m['load']:.1f})"
                     for m in samples)


def _burst(samples: list[dict]) -> str:
    rates = ", ".join(f"{m['tasks_per_s']:.0f} (load {m['load']:.1f})" for m in samples)
    return f"{rates} tasks/s, {sum(m['duplicates'] for m in samples)} duplicates"


def _report(args, versions: list[Version], results: dict[str, dict]) -> str:
    names = [v.name for v in versions]
    head = "| measurement | " + " | ".join(f"**{names[0]}**" if i == 0 else n for i, n in enumerate(names)) + " |"
    rule = "| --- |" + " --- |" * len(names)

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |"

    lines = [head, rule,
             row(f"INSERT → `/run`, LISTEN/NOTIFY (`DATABASE_URL`, `POLL_INTERVAL=5`), {args.rate:g} tasks/s for "
                 f"{args.seconds:g} s", lambda r: _lat(r["listen"])),
             row(f"INSERT → `/run`, pg_net trigger (`POLL_INTERVAL=5`), {args.rate:g} tasks/s for {args.seconds:g} s",
                 lambda r: _lat(r["trigger"])),
             row(f"INSERT → `/run`, polling only (`POLL_INTERVAL=1`), {args.rate:g} tasks/s for {args.seconds:g} s",
                 lambda r: _lat(r["polling"]))]
    for n in (1, 2):
        lines.append(row(f"{args.tasks} tasks inserted at once, claimed and submitted by {n} dispatcher{'s' * (n > 1)}",
                         lambda r, n=n: _burst(r[f"burst{n}"])))
    lines.append(row(f"RPCs per task over a whole life ({args.life_tasks} tasks, 1 dispatcher, webhooks), "
                     "chores and heartbeats apart",
                     lambda r: f"{r['life']['per_task']:.2f} per task; chores {r['life']['periodic_per_s']:.1f} per s "
                            f"(load {r['life']['load']:.1f})"))
    breakdown = "\n".join(f"- {n}: " + ", ".join(f"`{fn}` {per}" for fn, per in results[n]["life"]["by_function"].items())
                          for n in names)
    return f"""Command: `.venv/bin/python bench/bench_dispatcher.py --rate {args.rate:g} --seconds {args.seconds:g} --tasks {args.tasks} --life-tasks {args.life_tasks} --baseline {args.baseline} --rounds {args.rounds}`.
Machine: {platform.machine()}, Python {platform.python_version()}, 2 cores shared with other engineers' test runs; run on
{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC. Everything local: a throwaway PostgreSQL 15 with durable settings (fsync and
synchronous_commit on), the PostgREST RPC double and the RunPod emulator in the benchmark process, the pg_net double
(LISTEN/NOTIFY after commit) for the trigger, and the dispatchers as real `python -m supabase_sync` processes. The
baseline is `{args.baseline}` (commit {_commit(args.baseline)})'s `supabase_sync` with its own migrations, run in the same session on databases of
the same cluster. Latency = the emulator's wall-clock receipt of `/run` − the INSERT's commit; tasks inserted one at a
time on a fixed schedule. Each latency and burst cell lists {args.rounds} samples; the two versions take turns (one first,
then the other, the order alternating), so a machine getting busier or quieter favours neither.

{chr(10).join(lines)}

RPCs per task, by function (calls ÷ tasks; the chores, `POLL_INTERVAL=0.2` here, and heartbeats are counted per
second instead, since they run by time, not by task):
{breakdown}

Load average (1 min) at the start and the end of the run: {args.load_before:.1f} and {_load():.1f} on 2 cores; other
engineers' test suites were running, so compare the columns (measured side by side), not single numbers across runs.

The current dispatcher records each job id as its `/run` answers (one `attach_runpod_jobs` call carrying every answer
that came in meanwhile), where the baseline recorded a whole batch after its last `/run`; its worker asks
`start_task` once per job (the fence). For comparison, the seed's 5 s polling averages 2.5 s to pick a task up."""


if __name__ == "__main__":
    sys.exit(main())
