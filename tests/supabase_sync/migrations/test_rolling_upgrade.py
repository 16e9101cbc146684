"""A rolling upgrade with no pause in service: the previous release's dispatcher and the next one's
run together over one queue. Pre migrations go in while the old one works, its tasks keep
finishing, each task is submitted once, and the post migration waits until the old one stopped.

"The next release" is this release's supabase_sync plus a stand-in pre/post pair (9990/9991)
whose only effect is to record when each part ran: what is tested is when `migrate` and
MIGRATE_ON_START apply them, next to a real dispatcher of the previous release.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from tests.comfy_env import ROOT, free_port
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.harness import ENDPOINT, DispatcherProcess, dispatcher_env, wait_for_sync
from tests.supabase_sync.migrations.conftest import migrate_cli
from tests.supabase_sync.test_dispatch_flow import SEED_PARAMS, ok_worker

PRE = "create table if not exists public.rolling_demo (step text, at timestamptz default now());\n" \
      "insert into public.rolling_demo (step) values ('pre');\n"
POST = "insert into public.rolling_demo (step) values ('post');\n"


def next_release(tmp_path: Path) -> Path:
    folder = tmp_path / "next-release"
    shutil.copytree(ROOT / "supabase_sync", folder / "supabase_sync", ignore=shutil.ignore_patterns("__pycache__"))
    migrations = folder / "supabase_sync" / "sql" / "migrations"
    (migrations / "9990_pre_rolling_demo.sql").write_text(PRE)
    (migrations / "9991_post_rolling_demo.sql").write_text(POST)
    return folder


class Feeder:
    """Insert a task every `gap_s` seconds from a thread, as clients keep doing during a deploy."""

    def __init__(self, db, gap_s: float = 0.1) -> None:
        self.db, self.gap_s = db, gap_s
        self.tasks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Feeder":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tasks.append(self.db.insert_task("comfy", SEED_PARAMS))
            self._stop.wait(self.gap_s)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        return list(self.tasks)


def test_old_and_new_dispatchers_share_the_queue_through_a_pre_then_post_upgrade(
        legacy_db, emulator, previous_release, tmp_path):
    db = legacy_db
    new_release = next_release(tmp_path)
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker, concurrency=8).start()
    old = DispatcherProcess(dispatcher_env(db, emulator, free_port(), DISPATCHER_ID="old-dispatcher"),
                            tmp_path / "old.log", release=previous_release)
    new = DispatcherProcess(dispatcher_env(db, emulator, free_port(), DISPATCHER_ID="new-dispatcher",
                                           DATABASE_URL=db.dsn, MIGRATE_ON_START="true"),
                            tmp_path / "new.log", release=new_release)
    feeder = Feeder(db)

    def steps() -> list[str]:
        present = db.sql("select to_regclass('public.rolling_demo') is not null as t")[0]["t"]
        return [r["step"] for r in db.sql("select step from rolling_demo order by at")] if present else []

    def completed() -> int:
        return db.sql("select count(*) n from tasks where status = 'complete'")[0]["n"]

    try:
        old.start()
        feeder.start()
        wait_for_sync(lambda: completed() >= 5, what="the old release completing tasks")

        # 1. before the deploy: the next release's pre migrations, while the old dispatcher works
        pre = migrate_cli(db.dsn, "--pre", release=new_release)
        assert pre.returncode == 0, pre.stderr
        assert "applied 9990_pre_rolling_demo.sql" in pre.stdout
        assert "not applied yet from 9991_post_rolling_demo.sql on: a post migration" in pre.stdout
        assert steps() == ["pre"]
        done_before = completed()
        wait_for_sync(lambda: completed() >= done_before + 5, what="the old release still completing tasks")

        # 2. the new release starts beside it (MIGRATE_ON_START: nothing it may apply yet)
        new.start()
        both_since = len(feeder.tasks)
        wait_for_sync(lambda: {r["claimed_by"] for r in db.sql(
            "select claimed_by from tasks where status = 'complete' and created_at > now() - interval '3 seconds'")}
            >= {"new-dispatcher"}, timeout_s=30, what="the new release completing tasks")
        assert "not applied yet from 9991_post_rolling_demo.sql on: a post migration, and dispatchers of an older " \
               "release are still running: old-dispatcher (ships up to none)" in new.log_path.read_text()
        blocked = migrate_cli(db.dsn, release=new_release)  # an operator too early with the post step
        assert blocked.returncode == 3, blocked.stderr
        assert "old-dispatcher (ships up to none)" in blocked.stdout
        assert steps() == ["pre"]

        # 3. the old release is stopped: the new one applies the post migration by itself
        assert old.terminate() == 0
        wait_for_sync(lambda: steps() == ["pre", "post"], timeout_s=30, what="the post migration")
        assert "applied 9991_post_rolling_demo.sql" in new.log_path.read_text()
        after_post = completed()
        wait_for_sync(lambda: completed() >= after_post + 5, what="tasks completing after the post migration")
    finally:
        tasks = feeder.stop()
        try:
            wait_for_sync(lambda: completed() >= len(tasks), timeout_s=60, what="every task complete")
        finally:
            new.terminate()
            old.terminate()
            worker.stop()
    assert len(tasks) > both_since
    submitted = [job.input["task_id"] for job in emulator.submissions]
    assert sorted(submitted) == sorted(tasks)  # every task submitted, none twice
    statuses = db.sql("select status, count(*) n from tasks group by 1")
    assert statuses == [{"status": "complete", "n": len(tasks)}]
    recorded = [r["name"] for r in db.sql("select name from supabase_sync.schema_migrations order by version")]
    assert recorded[-2:] == ["9990_pre_rolling_demo.sql", "9991_post_rolling_demo.sql"]
