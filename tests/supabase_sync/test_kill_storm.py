"""The kill storm, sized for CI: three `python -m supabase_sync` processes feeding 200 tasks
while one of them is SIGKILLed every 0.5-2 s (and started again), RunPod answers /run with
429, 500 before and 500 AFTER making the job, 10 % of the jobs fail once, 20 % of the
webhooks are lost, PostgreSQL is restarted and the API answers 503 for 2 s.

Workers run every job through the real start fence (comfy/worker/fence.py -> start_task)
before "executing" it. At the end: no task lost or stuck, no workflow executed twice (every
execution has its own claim and its result is the one kept), no attempt spent by a
dispatcher's death, and no final state ever changed (an audit trigger saw every update).
The long version (1,000 tasks): bench/bench_kill_storm.py."""

from __future__ import annotations

from pathlib import Path

from tests.supabase_sync.storm import run_storm


def test_a_kill_storm_with_faults_loses_nothing_runs_nothing_twice_and_overwrites_nothing(db, emulator, tmp_path: Path):
    storm = run_storm(db, emulator, tmp_path, tasks=200, waves=10, storm_s=14)
    assert len(storm.rows) == 200
    # 0 lost, 0 stuck: every task complete (the ones failing once were retried); 0 executed
    # twice; attempts = executions (no attempt spent by a death); the kept result is the last
    # execution's; 0 final states changed afterwards
    assert storm.problems == {"not_complete": [], "executed_twice": [], "attempts_not_executions": [],
                              "result_not_last_execution": [], "overwritten": []}, tmp_path
    # the storm really happened, and the fence really had duplicate jobs to refuse
    assert storm.kills >= 5
    assert storm.faults.get("500_after", 0) >= 3 and storm.faults.get("webhook_lost", 0) >= 10
    assert len(storm.submissions) > storm.executed and storm.refused >= 1
    started = {job for runs in storm.executions.by_task.values() for _, job in runs}
    for job in storm.submissions:  # every other job was refused by the fence or never started
        assert job.id in started or job.status in ("FAILED", "CANCELLED", "IN_QUEUE"), (job.id, job.status)
