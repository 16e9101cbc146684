"""comfy/volume_lock.py: one holder at a time across processes, dead holders taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfy.volume_lock import LockWaitCancelled, LockWaitTimeout, Owner, VolumeLock
from tests.comfy_env import ROOT

HOLDER = """
import sys, time
from pathlib import Path
from comfy.volume_lock import VolumeLock
lock = VolumeLock(Path(sys.argv[1]), heartbeat_s=float(sys.argv[2]))
assert lock.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_holder(path: Path, heartbeat_s: float = 0.1) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(heartbeat_s)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def foreign_lock(path: Path) -> None:
    """A lock written by a worker on another machine (its pids mean nothing here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "other-machine", "pid_namespace": "pid:[1]", "pid": 1, "token": "t" * 16,
                                "since": time.time()}))


def test_a_second_process_waits_while_the_holder_is_alive(tmp_path):
    path = tmp_path / "a.lock"
    holder = start_holder(path)
    try:
        waiter = VolumeLock(path, stale_s=1.0, poll_s=0.05)
        with pytest.raises(LockWaitTimeout, match="still held by pid"):
            waiter.acquire(timeout_s=3.0)  # three times the stale time: the holder's heartbeat keeps it
        assert Owner.from_file(path).pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_killed_on_this_machine_is_taken_over_at_once(tmp_path):
    path = tmp_path / "a.lock"
    holder = start_holder(path, heartbeat_s=0.1)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = VolumeLock(path, stale_s=600)  # the dead pid is enough, no waiting for staleness
    started = time.monotonic()
    lock.acquire(timeout_s=30)
    try:
        assert time.monotonic() - started < 10
        assert Owner.from_file(path).pid == os.getpid()
    finally:
        lock.release()
    assert not path.exists()


def test_a_silent_holder_on_another_machine_is_taken_over_after_the_stale_time(tmp_path):
    path = tmp_path / "a.lock"
    foreign_lock(path)
    lock = VolumeLock(path, stale_s=0.5, poll_s=0.05)
    started = time.monotonic()
    lock.acquire(timeout_s=30)
    try:
        assert time.monotonic() - started >= 0.5
        assert Owner.from_file(path).token == lock.owner.token
    finally:
        lock.release()


def test_a_holder_that_was_taken_over_leaves_the_new_lock_alone(tmp_path):
    path = tmp_path / "a.lock"
    first = VolumeLock(path, heartbeat_s=0.05)
    assert first.try_acquire()
    first._heartbeat.stop()  # it freezes (SIGSTOP, a stuck volume): no more heartbeats
    second = VolumeLock(path, stale_s=0.3, poll_s=0.02)
    second.acquire(timeout_s=30)
    try:
        assert not first.still_held()
        first.release()  # late: must not remove the lock the second one holds now
        assert path.exists() and Owner.from_file(path).token == second.owner.token
    finally:
        second.release()


def test_waiting_for_a_lock_can_be_cancelled(tmp_path):
    path = tmp_path / "a.lock"
    foreign_lock(path)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(LockWaitCancelled):
        VolumeLock(path, stale_s=600).acquire(cancel=cancel)
    assert Owner.from_file(path).host == "other-machine"


def test_only_one_of_many_threads_holds_the_lock_at_a_time(tmp_path):
    path = tmp_path / "a.lock"
    inside, most, rounds = [0], [0], []
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            lock = VolumeLock(path, poll_s=0.001)
            lock.acquire(timeout_s=60)
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.001)
            with guard:
                inside[0] -= 1
                rounds.append(1)
            lock.release()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(rounds) == 120 and most[0] == 1
