"""Locks and leases shared by worker processes through files on a (network) volume.

Workers on one RunPod network volume are separate machines, and kernel locks (flock,
fcntl) are not reliable across machines on network filesystems. So a lock here is a file:
created atomically (a hard link of a fully written file, which fails if the name exists;
O_CREAT|O_EXCL where the filesystem has no hard links), holding who owns it. Its holder
refreshes its mtime every `heartbeat_s` from a thread.

A waiter takes over the lock of a dead holder:
  * a holder on this machine (same host name and pid namespace) whose pid is gone: at once;
  * any other holder once the lock file has not changed for `stale_s` of the waiter's own
    watching (no clock is compared across machines).
Taking over renames the file to a unique name (atomic: one waiter wins), checks that what
it renamed is the lock it judged dead, and otherwise puts it back.

Standard library only: the custom node install runs it before ComfyUI starts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("comfy.volume_lock")

HEARTBEAT_S = 5.0
STALE_S = 60.0  # a holder that stopped refreshing for this long is taken for dead


class LockWaitTimeout(TimeoutError):
    """The lock was still held by a live holder when the wait ran out."""


class LockWaitCancelled(RuntimeError):
    """The wait for the lock was cancelled (the job was cancelled)."""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock or a lease: enough to tell, on the same machine, whether it is alive."""

    host: str
    pid_namespace: str
    pid: int
    token: str
    since: float  # wall clock, for people reading the file

    @classmethod
    def me(cls) -> "Owner":
        return cls(socket.gethostname(), _pid_namespace(), os.getpid(), secrets.token_hex(8), time.time())

    def dead_here(self) -> bool:
        """True only when the owner was on this machine (same pid namespace) and its pid is gone."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace():
            return False  # another machine or container: its pids mean nothing here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_file(cls, path: Path) -> "Owner | None":
        """The owner written in path; None if it is gone, empty or not ours to read."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["host"]), str(data["pid_namespace"]), int(data["pid"]), str(data["token"]),
                       float(data["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def write_new(path: Path, content: str) -> bool:
    """Create path holding content, atomically; False if it exists already."""
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
    scratch.write_text(content, encoding="utf-8")
    try:
        os.link(scratch, path)  # atomic, and readers never see an empty lock file
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        return True
    finally:
        scratch.unlink(missing_ok=True)


def take_away(path: Path, token: str) -> bool:
    """Remove path if it still holds `token`; a file that holds another is left (put back).

    Renaming first makes the check and the removal one step for everyone else.
    """
    tomb = path.with_name(f".{path.name}.{secrets.token_hex(6)}.gone")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return False
    found = Owner.from_file(tomb)
    if found is not None and found.token == token:
        tomb.unlink(missing_ok=True)
        return True
    try:
        os.link(tomb, path)  # someone else's: put it back, unless a newer one is there already
    except OSError:
        pass
    tomb.unlink(missing_ok=True)
    return False


class Heartbeat:
    """Touch files every interval from a daemon thread, so others see their owner alive."""

    def __init__(self, interval_s: float, beat: Callable[[], bool], name: str) -> None:
        self._interval_s = interval_s
        self._beat = beat  # returns False to stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if not self._beat():
                    return
            except OSError as exc:  # a volume hiccup: try again next beat
                log.warning("heartbeat %s: %s", self._thread.name, exc)

    def stop(self) -> None:
        self._stop.set()


class VolumeLock:
    """One holder at a time across processes and machines sharing `path`'s filesystem."""

    def __init__(self, path: Path, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
                 poll_s: float = 0.1) -> None:
        self.path = path
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.poll_s = poll_s
        self.owner: Owner | None = None
        self.lost = False  # set when someone took the lock over from us (we looked dead)
        self._heartbeat: Heartbeat | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = Owner.me()
        if not write_new(self.path, owner.to_json()):
            return False
        self.owner, self.lost = owner, False
        self._heartbeat = Heartbeat(self.heartbeat_s, self._beat, f"lock-heartbeat-{self.path.name}")
        return True

    def acquire(self, timeout_s: float | None = None, cancel: threading.Event | None = None,
                on_wait: Callable[[Owner | None], None] | None = None) -> None:
        """Wait for the lock, taking over a dead holder's; raise LockWaitTimeout or LockWaitCancelled.

        on_wait is called once, with the holder, when the lock is found taken.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        watched: tuple[str | None, int] | None = None  # (holder token, mtime) as last seen
        unchanged_since = time.monotonic()
        told = False
        while not self.try_acquire():
            holder = Owner.from_file(self.path)
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            if not told and on_wait is not None:
                on_wait(holder)
                told = True
            now = time.monotonic()
            seen = (holder.token if holder else None, mtime)
            if seen != watched:
                watched, unchanged_since = seen, now
            if holder is not None and (holder.dead_here() or now - unchanged_since >= self.stale_s):
                why = "is gone" if holder.dead_here() else f"has not refreshed it for {now - unchanged_since:.0f} s"
                if take_away(self.path, holder.token):
                    log.warning("lock %s: its holder (%s) %s; taking it over", self.path, holder.describe(), why)
                continue
            if holder is None and now - unchanged_since >= self.stale_s:
                # unreadable for that long (a crash between create and write): remove it
                self.path.unlink(missing_ok=True)
                continue
            if deadline is not None and now >= deadline:
                raise LockWaitTimeout(f"{self.path} is still held by {holder.describe() if holder else 'another process'}")
            if cancel is not None:
                if cancel.wait(self.poll_s):
                    raise LockWaitCancelled(str(self.path))
            else:
                time.sleep(self.poll_s)

    def still_held(self) -> bool:
        """True if the lock file still names us (nobody took it over)."""
        found = Owner.from_file(self.path)
        return self.owner is not None and found is not None and found.token == self.owner.token

    def _beat(self) -> bool:
        if not self.still_held():
            self.lost = True
            log.warning("lock %s was taken over by another process", self.path)
            return False
        os.utime(self.path)
        return True

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self.owner is not None:
            take_away(self.path, self.owner.token)
            self.owner = None

    def __enter__(self) -> "VolumeLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
