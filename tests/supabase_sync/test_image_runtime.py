"""The dispatcher image's requirements are enough: python -m supabase_sync run with only the modules
of builder/dispatcher-constraints.txt importable (tests/fixtures/image_guard.py) migrates, listens,
dispatches and cancels; every module of the package imports; the image's HEALTHCHECK command works."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.comfy_env import ROOT, free_port
from tests.supabase_sync.harness import ENDPOINT, DispatcherProcess, dispatcher_env, wait_for_sync
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS


GUARD = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.fixtures import image_guard; "


def guarded(*args: str) -> list[str]:
    """`python -m supabase_sync ARGS` with only the dispatcher image's modules importable."""
    return [sys.executable, "-c", GUARD + "image_guard.run('dispatcher')", *args]


def python_guarded(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARD + "image_guard.install('dispatcher'); " + code], cwd=ROOT,
                          capture_output=True, text=True)


def test_the_guard_refuses_what_the_image_does_not_install():
    done = python_guarded("import runpod")
    assert done.returncode == 1
    assert "No module named 'runpod' (not a requirement of the dispatcher image)" in done.stderr
    assert python_guarded("import psycopg, uvicorn, supabase").returncode == 0


def test_every_module_of_the_package_imports_with_the_images_requirements_only():
    done = python_guarded("import importlib, pkgutil, supabase_sync; "
                          "names = [m.name for m in pkgutil.walk_packages(supabase_sync.__path__, 'supabase_sync.')]; "
                          "[importlib.import_module(n) for n in names]; print(len(names))")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20


def test_the_dispatcher_works_with_only_the_images_requirements(db, emulator, tmp_path):
    db.sql("delete from supabase_sync.schema_migrations where version = '0060'")  # MIGRATE_ON_START has work to do
    env = dispatcher_env(db, emulator, free_port(), DATABASE_URL=db.dsn, MIGRATE_ON_START="true", POLL_INTERVAL="30",
                         STATUS_CHECK_INTERVAL="60")
    proc = DispatcherProcess(env, tmp_path / "guarded.log", command=guarded()).start()
    try:
        task_id = db.insert_task("comfy", SEED_PARAMS)
        job_id = wait_for_sync(lambda: db.task(task_id)["runpod_job_id"], timeout_s=10, what="submitted through LISTEN")
        emulator.take_job(ENDPOINT)
        db.sql("select cancel_task(%s)", (task_id,))
        wait_for_sync(lambda: emulator.jobs[job_id].status == "CANCELLED", timeout_s=10, what="cancelled on RunPod")
        health = subprocess.run(guarded("healthcheck"), cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "DISPATCHER_PORT": env["DISPATCHER_PORT"]})
        assert health.returncode == 0, health.stderr
    finally:
        proc.terminate()
    log = proc.log_path.read_text()
    assert "applied 0060_notify_listeners.sql" in log and "No module named" not in log


def test_the_healthcheck_command_fails_when_no_dispatcher_answers():
    done = subprocess.run([sys.executable, "-m", "supabase_sync", "healthcheck"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "DISPATCHER_PORT": str(free_port())})
    assert done.returncode == 1 and "supabase_sync healthcheck:" in done.stderr
