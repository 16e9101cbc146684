"""`python -m supabase_sync scale` as an operator runs it: a real process, real PostgreSQL
behind the PostgREST double, the RunPod emulator with the management API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.comfy_env import ROOT



def scaler_env(db, emulator, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SUPABASE_URL": db.url,
        "SUPABASE_SERVICE_ROLE_KEY": db.service_key,
        "RUNPOD_API_KEY": emulator.api_key,
        "RUNPOD_API_BASE_URL": emulator.api_base_url,
        "RUNPOD_MANAGEMENT_URL": emulator.url,
        "DISPATCHER_ROUTES": "comfy=EPA;vace,flux=EPB",
        "SCALER_MAX_WORKERS": "4",
    }
    env.update(extra)
    return env


def scale(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supabase_sync", "scale", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_once_runs_one_pass_applies_and_exits_0(db, emulator, management):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)
    management.add_endpoint("EPB", workers_min=0, workers_max=3)
    for task_type in ("comfy", "comfy", "vace"):
        db.insert_task(task_type)
    done = scale(scaler_env(db, emulator), "--once")
    assert done.returncode == 0, done.stderr
    assert management.workers("EPA")["min"] == 2 and management.workers("EPA")["max"] == 4
    assert management.workers("EPB")["min"] == 1
    assert len(management.patches()) == 2
    recorded = {r["endpoint_id"]: r for r in db.sql("select * from scaler_decisions")}
    assert recorded["EPA"]["outcome"] == "applied" and recorded["EPA"]["target_min"] == 2
    assert recorded["EPA"]["applied_min"] == 2 and recorded["EPA"]["queued"] == 2


def test_dry_run_prints_each_decision_and_changes_nothing(db, emulator, management):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)
    management.add_endpoint("EPB", workers_min=1, workers_max=3)
    for _ in range(3):
        db.insert_task("comfy")
    done = scale(scaler_env(db, emulator), "--once", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert set(lines) == {"endpoint=EPA", "endpoint=EPB"}
    for expected in ("outcome=dry_run", "queued=3", "in_progress=0", "runpod_in_queue=0", "workers_running=0",
                     "workload=3", "current=0/3 idle=5s", "desired=3/4", "target=3/4"):
        assert expected in lines["endpoint=EPA"]
    assert "current=1/3" in lines["endpoint=EPB"] and "target=1/4" in lines["endpoint=EPB"]
    assert "pending" in lines["endpoint=EPB"]  # lowering min 1 -> 0 waits for the grace period
    assert management.patches() == []
    assert management.workers("EPA") == {"min": 0, "max": 3, "idleTimeout": 5}
    assert db.sql("select * from scaler_decisions") == []


def test_malformed_config_is_a_clear_error_at_start_up(db, emulator, management, tmp_path):
    management.add_endpoint("EPA")
    rules = tmp_path / "scaler.json"
    rules.write_text(json.dumps({"endpoints": {"EPA": {"max_worker": 3}}}))
    done = scale(scaler_env(db, emulator, SCALER_RULES_FILE=str(rules)), "--once")
    assert done.returncode == 2
    assert "configuration error: SCALER_RULES_FILE endpoints.EPA.max_worker: Extra inputs are not permitted" in done.stderr
    assert management.requests == []

    done = scale(scaler_env(db, emulator, SCALER_SCALE_UP_MULTIPLIER="fast"), "--once")
    assert done.returncode == 2 and "SCALER_SCALE_UP_MULTIPLIER" in done.stderr

    done = scale(scaler_env(db, emulator, SCALER_MIN_WORKERS="6"), "--once")
    assert done.returncode == 2 and "min_workers (6) is above max_workers (4)" in done.stderr

    rules.write_text(json.dumps({"endpoints": {"EPZ": {"max_workers": 3}}}))
    done = scale(scaler_env(db, emulator, SCALER_RULES_FILE=str(rules)), "--once")
    assert done.returncode == 2 and "endpoints.EPZ: not an endpoint of the dispatcher's routes" in done.stderr
    assert management.requests == []


def test_once_exits_1_when_an_endpoint_cannot_be_changed(db, emulator, management):
    management.add_endpoint("EPA")  # EPB unknown to RunPod: its PATCH is refused with 404
    db.insert_task("vace")
    done = scale(scaler_env(db, emulator), "--once")
    assert done.returncode == 1
    assert "endpoint=EPB outcome=apply_failed" in done.stderr and "404" in done.stderr


def test_the_loop_keeps_scaling_until_sigterm(db, emulator, management):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)
    management.add_endpoint("EPB", workers_min=0, workers_max=3)
    env = scaler_env(db, emulator, SCALER_INTERVAL_S="0.2", SCALER_SCALE_DOWN_GRACE_S="0")
    process = subprocess.Popen([sys.executable, "-m", "supabase_sync", "scale"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while management.workers("EPA")["max"] != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert management.workers("EPA") == {"min": 0, "max": 4, "idleTimeout": 5}
        task_id = db.insert_task("comfy")
        while management.workers("EPA")["min"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert management.workers("EPA")["min"] == 1
        db.sql("select cancel_task(%s)", (task_id,))
        while management.workers("EPA")["min"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert management.workers("EPA")["min"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "scaler stopped" in err
