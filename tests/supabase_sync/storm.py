"""The kill storm, shared by the CI test (tests/supabase_sync/test_kill_storm.py) and its long
version (bench/bench_kill_storm.py): dispatcher processes SIGKILLed and started again while
tasks arrive, with RunPod, webhook and database faults injected, and workers that run each
job through the real start fence. `run_storm` returns what happened; `StormResult.problems`
counts the ways it could have gone wrong."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy.worker.fence import TaskFence
from comfy.worker.supabase_rpc import SupabaseRpc
from tests.comfy_env import free_port
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.harness import ENDPOINT, DispatcherProcess, dispatcher_env, wait_for_sync

PARAMS = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1}},
                       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}}


def fails_once(index: int) -> bool:
    """Every 10th task's first execution fails (retryable, as a CUDA error would)."""
    return index % 10 == 3


# Test-only: every update of a task, as the database saw it.
AUDIT_SQL = """
create table task_audit (
    id bigserial primary key, task_id uuid, old_status text, new_status text,
    old_job text, new_job text, old_output text, new_output text, at timestamptz default clock_timestamp()
);
create function audit_task() returns trigger language plpgsql security definer set search_path = public as $$
begin
    insert into task_audit (task_id, old_status, new_status, old_job, new_job, old_output, new_output)
    values (old.task_id, old.status, new.status, old.runpod_job_id, new.runpod_job_id, old.output_url, new.output_url);
    return null;
end
$$;
create trigger task_audit after update on tasks for each row execute function audit_task();
"""


class Executions:
    """What the workers really ran (only the jobs the fence let through)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_task: dict[str, list[tuple[str | None, str]]] = defaultdict(list)  # task -> [(lease, job id)]
        self.index: dict[str, int] = {}  # task -> its number, in insertion order

    def run(self, job_input: Any, job_id: str) -> dict[str, Any]:
        task_id = job_input["task_id"]
        with self.lock:
            self.by_task[task_id].append((job_input.get("lease_token"), job_id))
            first = len(self.by_task[task_id]) == 1
        time.sleep(random.uniform(0.01, 0.05))
        if first and fails_once(self.index[task_id]):
            return {"error": "CUDA error: out of memory", "error_type": "execution_error"}
        return {"outputs": [{"node_id": "2", "kind": "image", "url": f"https://cdn.test/{job_id}.png"}]}


@dataclass
class StormResult:
    rows: dict[str, dict[str, Any]]
    executions: Executions
    overwritten: list[dict[str, Any]]
    submissions: list[Any]
    faults: dict[str, int]
    kills: int
    refused: int
    seconds: float
    problems: dict[str, list[Any]] = field(default_factory=dict)

    def check(self) -> "StormResult":
        """Fill `problems`: lost or stuck tasks, tasks executed twice, attempts spent by deaths,
        results that are not the last execution's, final states overwritten."""
        by_task = self.executions.by_task
        expected = {t: 2 if fails_once(self.executions.index[t]) else 1 for t in self.rows}
        self.problems = {
            "not_complete": [(t, r["status"], r["error_message"]) for t, r in self.rows.items() if r["status"] != "complete"],
            "executed_twice": [(t, by_task[t]) for t in self.rows
                               if len(by_task[t]) != expected[t] or len({lease for lease, _ in by_task[t]}) != len(by_task[t])],
            "attempts_not_executions": [(t, r["attempts"], r.get("lost_claims"), len(by_task[t]))
                                        for t, r in self.rows.items() if r["attempts"] != len(by_task[t])],
            "result_not_last_execution": [t for t, r in self.rows.items() if by_task[t] and (
                r["runpod_job_id"] != by_task[t][-1][1] or r["output_url"] != f"https://cdn.test/{by_task[t][-1][1]}.png")],
            "overwritten": self.overwritten,
        }
        return self

    @property
    def executed(self) -> int:
        return sum(len(v) for v in self.executions.by_task.values())


def run_storm(db: Any, emulator: Any, logs: Path, tasks: int, waves: int, storm_s: float,
              kill_every_s: tuple[float, float] = (0.5, 2.0), dispatchers: int = 3, settle_s: float = 120,
              seed: int = 7, cwd: Path | None = None) -> StormResult:
    """`tasks` arrive in `waves` (one a second) while, for `storm_s` seconds, a random
    dispatcher is SIGKILLed and started again every `kill_every_s`; the API answers 503 for
    2 s and PostgreSQL is restarted once in the middle. Then everything runs until every
    task is final (at most `settle_s`)."""
    db.sql(AUDIT_SQL)
    emulator.inject_run_faults(rate_429=0.05, rate_500_before=0.03, rate_500_after=0.05, seed=seed + 4)
    emulator.lose_webhooks(0.2)
    fence = TaskFence(SupabaseRpc(db.url, db.service_key), timeout_s=60)
    executions = Executions()

    def fenced_run(job_input: Any, job_id: str) -> dict[str, Any]:  # what handler.py does: the fence, then the job
        return fence.check(job_input, job_id) or executions.run(job_input, job_id)

    worker = ScriptedWorker(emulator, ENDPOINT, lambda i, p: {"error": "not reached"}, concurrency=8,
                            before_run=fenced_run).start()
    routes = logs / "routes.json"
    routes.write_text(json.dumps({"routes": [{"endpoint_id": ENDPOINT, "task_types": ["comfy"], "max_in_flight": 60}]}))
    procs = []
    for n in range(dispatchers):
        env = dispatcher_env(db, emulator, free_port(), DISPATCHER_ROUTES="", DISPATCHER_ROUTES_FILE=str(routes),
                             DISPATCHER_ID=f"d{n}", CLAIM_LEASE_S="2", STATUS_CHECK_INTERVAL="1", CLAIM_BATCH="20",
                             POLL_INTERVAL="0.2")
        procs.append(DispatcherProcess(env, logs / f"d{n}.log", **({"cwd": cwd} if cwd else {})))
    for proc in procs:
        proc.start()
    rng = random.Random(seed)
    kills = 0
    started = time.monotonic()
    try:
        storm_ends = started + storm_s
        next_wave, inserted, faults_done = started, 0, set()
        next_kill = started + rng.uniform(*kill_every_s)
        per_wave = -(-tasks // waves)
        while time.monotonic() < storm_ends or inserted < tasks:
            now = time.monotonic()
            if inserted < tasks and now >= next_wave:
                count = min(per_wave, tasks - inserted)
                rows = db.sql("insert into tasks (task_type, params) select 'comfy', %s from generate_series(1, %s) "
                              "returning task_id", (json.dumps(PARAMS), count))
                for row in rows:
                    executions.index[str(row["task_id"])] = len(executions.index)
                inserted += count
                next_wave = now + 1.0
            if now < storm_ends and now >= next_kill:
                victim = rng.choice(procs)
                victim.kill()
                kills += 1
                victim.start(wait=False)  # back at once, on the same port (webhooks find it)
                next_kill = now + rng.uniform(*kill_every_s)
            if "outage" not in faults_done and now > started + storm_s * 0.3:
                db.postgrest.outage(2.0)  # the API answers 503 for everyone
                faults_done.add("outage")
            if "restart" not in faults_done and now > started + storm_s * 0.6:
                db.cluster.restart()  # PostgreSQL restarted: connections cut and refused meanwhile
                faults_done.add("restart")
            time.sleep(0.05)
        for proc in procs:  # the storm is over: all of them up again
            if not proc.alive:
                proc.start(wait=False)
        wait_for_sync(lambda: db.sql("select count(*) n from tasks where status not in ('complete', 'failed', "
                                     "'cancelled')")[0]["n"] == 0,
                      timeout_s=settle_s, interval_s=0.5, what="every task final")
        seconds = time.monotonic() - started
        time.sleep(2.0)  # late webhooks and polls, if anything were to change a final row, would show now
    finally:
        for proc in procs:
            proc.kill()
        worker.stop()
    assert faults_done == {"outage", "restart"}
    return StormResult(
        rows={str(r["task_id"]): r for r in db.sql("select * from tasks")},
        executions=executions,
        overwritten=db.sql("select * from task_audit where old_status in ('complete', 'failed', 'cancelled')"),
        submissions=list(emulator.submissions), faults=dict(emulator.faults), kills=kills,
        refused=fence.refused, seconds=seconds,
    ).check()
