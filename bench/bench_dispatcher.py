"""Dispatcher benchmarks: INSERT -> RunPod /run latency (trigger / polling) and throughput.

    .venv/bin/python bench/bench_dispatcher.py [--latency-tasks 100] [--poll-tasks 20] [--tasks 2000]

Runs on this machine only: a throwaway PostgreSQL 15 (durable settings: fsync and
synchronous_commit on), the PostgREST RPC double and the RunPod emulator in this process,
the pg_net double for the trigger, and the dispatchers as real `python -m supabase_sync`
processes. Latency is the emulator's wall-clock receipt of /run minus the INSERT's commit.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supabase_sync.migrations import migration  # noqa: E402
from tests.comfy_env import free_port  # noqa: E402
from tests.supabase_sync.harness import DispatcherProcess, dispatcher_env, wait_for_sync  # noqa: E402
from tests.doubles.pg_net import PgNetBridge  # noqa: E402
from tests.fixtures.pgcluster import PG_NET_STUB_SQL, start_cluster  # noqa: E402
from tests.doubles.postgrest import PostgrestDouble, make_key  # noqa: E402
from tests.doubles.runpod_emulator import RunPodEmulator  # noqa: E402

ENDPOINT = "bench-endpoint"
PARAMS = json.dumps({"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}})


class _Db:
    def __init__(self, cluster, name: str) -> None:
        import psycopg

        self.cluster, self.name = cluster, name
        self.dsn = cluster.create_database(name)
        self.postgrest = PostgrestDouble(cluster.dsn(user="authenticator", dbname=name)).start()
        self.url = self.postgrest.url
        self.service_key = make_key("service_role")
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def insert(self, count: int = 1) -> float:
        """Insert `count` queued tasks in one statement; returns the wall time at commit."""
        self.conn.execute("insert into tasks (task_type, params) select 'comfy', %s from generate_series(1, %s)",
                          (PARAMS, count))
        return time.time()

    def close(self) -> None:
        self.postgrest.stop()
        self.conn.close()


def _routes(logs: Path, tasks: int) -> Path:
    # nothing finishes in these runs (no worker): the in-flight limit must not be what stops them
    path = logs / f"routes-{tasks}.json"
    path.write_text(json.dumps({"routes": [{"endpoint_id": ENDPOINT, "task_types": ["comfy"],
                                            "max_in_flight": tasks * 2}]}))
    return path


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(values), "p50_ms": statistics.median(ordered) * 1000, "p95_ms": pick(0.95) * 1000,
            "max_ms": ordered[-1] * 1000, "mean_ms": statistics.fmean(ordered) * 1000}


def _latency(cluster, logs: Path, name: str, tasks: int, trigger: bool, poll_interval: str, gap_s: float) -> dict:
    db = _Db(cluster, name)
    emulator = RunPodEmulator().start()
    bridge = None
    port = free_port()
    if trigger:
        db.conn.execute(PG_NET_STUB_SQL)
        done = cluster.psql_file(migration("0003").path, dbname=name)
        assert done.returncode == 0, done.stderr
        db.conn.execute("insert into dispatcher_wakeup (url, secret) values (%s, 'bench-trigger')",
                        (f"http://127.0.0.1:{port}/hooks/supabase",))
        bridge = PgNetBridge(db.dsn).start()
    env = dispatcher_env(db, emulator, port, DISPATCHER_ROUTES="", DISPATCHER_ROUTES_FILE=str(_routes(logs, tasks)),
                         POLL_INTERVAL=poll_interval,
                         TRIGGER_SECRET="bench-trigger", DISPATCHER_ID=f"bench-{name}", CLAIM_LEASE_S="60",
                         STATUS_CHECK_INTERVAL="600")
    dispatcher = DispatcherProcess(env, logs / f"{name}.log").start()
    latencies = []
    try:
        time.sleep(1.0)
        for i in range(tasks):
            committed = db.insert()
            wait_for_sync(lambda: len(emulator.submissions) == i + 1, timeout_s=float(poll_interval) * 3 + 5,
                          interval_s=0.001, what=f"task {i} submitted")
            latencies.append(emulator.submissions[i].submitted_wall - committed)
            time.sleep(gap_s)
    finally:
        dispatcher.terminate()
        if bridge:
            bridge.stop()
        emulator.stop()
        db.close()
    return _percentiles(latencies)


def _throughput(cluster, logs: Path, tasks: int, dispatchers: int = 2) -> dict:
    db = _Db(cluster, "throughput")
    emulator = RunPodEmulator().start()
    routes = _routes(logs, tasks)
    procs = []
    try:
        for n in range(dispatchers):
            env = dispatcher_env(db, emulator, free_port(), DISPATCHER_ROUTES="", DISPATCHER_ROUTES_FILE=str(routes),
                                 POLL_INTERVAL="0.05", DISPATCHER_ID=f"bench-d{n}", CLAIM_LEASE_S="60",
                                 STATUS_CHECK_INTERVAL="600", CLAIM_BATCH="100")
            procs.append(DispatcherProcess(env, logs / f"throughput-{n}.log").start())
        time.sleep(1.0)
        self_cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = db.insert(tasks)
        wait_for_sync(lambda: len(emulator.submissions) >= tasks, timeout_s=300, interval_s=0.01, what="all submitted")
        finished = max(job.submitted_wall for job in emulator.submissions)
        time.sleep(0.5)  # anything submitted twice would show up now
        submitted = [job.input["task_id"] for job in emulator.submissions]
        attached = db.conn.execute("select count(*) from tasks where runpod_job_id is not null").fetchone()[0]
        per = dict(db.conn.execute("select claimed_by, count(*) from tasks group by 1").fetchall())
    finally:
        for proc in procs:
            proc.terminate()
        emulator.stop()
        db.close()
    doubles = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the dispatchers (and psql), whole life
    cpu = {"doubles_s": round(doubles.ru_utime + doubles.ru_stime - self_cpu.ru_utime - self_cpu.ru_stime, 2),
           "dispatchers_s": round(children.ru_utime + children.ru_stime, 2)}
    return {"cpu": cpu, "tasks": tasks, "dispatchers": dispatchers, "seconds": finished - started,
            "tasks_per_s": tasks / (finished - started), "submissions": len(submitted),
            "duplicates": len(submitted) - len(set(submitted)), "attached": attached, "per_dispatcher": per}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-tasks", type=int, default=100)
    parser.add_argument("--poll-tasks", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-dispatcher-"))
    cluster = start_cluster(durable=True)
    try:
        trig = _latency(cluster, logs, "trigger", args.latency_tasks, trigger=True, poll_interval="5", gap_s=0.05)
        print(f"INSERT -> /run, trigger (POLL_INTERVAL=5): n={trig['n']} p50={trig['p50_ms']:.1f} ms "
              f"p95={trig['p95_ms']:.1f} ms max={trig['max_ms']:.1f} ms mean={trig['mean_ms']:.1f} ms", flush=True)
        poll = _latency(cluster, logs, "polling", args.poll_tasks, trigger=False, poll_interval="1", gap_s=0.37)
        print(f"INSERT -> /run, polling only (POLL_INTERVAL=1): n={poll['n']} p50={poll['p50_ms']:.1f} ms "
              f"p95={poll['p95_ms']:.1f} ms max={poll['max_ms']:.1f} ms", flush=True)
        thr = _throughput(cluster, logs, args.tasks)
        print(f"throughput: {thr['tasks']} tasks claimed+submitted by {thr['dispatchers']} dispatchers in "
              f"{thr['seconds']:.2f} s = {thr['tasks_per_s']:.0f} tasks/s; submissions={thr['submissions']} "
              f"duplicates={thr['duplicates']} attached={thr['attached']} per dispatcher={thr['per_dispatcher']} "
              f"cpu={thr['cpu']}",
              flush=True)
    finally:
        cluster.stop()
    print(f"dispatcher logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
