"""The jobs one worker holds: at most JOB_CONCURRENCY at once, and ComfyUI's one slot.

ComfyUI runs one prompt at a time, so a job's work is three stages around one slot:

* prepare: parse, plan delivery, fetch models, download and stage inputs (no slot);
* execute: run the prompt and take its outputs out of ComfyUI's folders (the slot);
* deliver: upload or encode the outputs, clean up (no slot).

The slot goes to jobs in the order they arrived, one at a time. With JOB_CONCURRENCY=1 a job
takes the slot when it arrives and keeps it to its end, which is what a worker without
pipelining does. With 2 or 3, while job N executes, job N+1 prepares and job N-1 delivers.

Only the slot's holder acts on ComfyUI's prompts and process: queueing, /interrupt, queue
deletes, killing and restarting a ComfyUI that hung. A job outside the slot never touches
another job's prompt.
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator

from comfy.errors import JobCancelled

SLOT_POLL_S = 0.1  # how often a job waiting for the slot checks its cancellation


class Stage(str, Enum):
    """Where a job is."""

    PREPARE = "prepare"
    WAIT = "wait"  # prepared, waiting for ComfyUI's slot
    EXECUTE = "execute"
    DELIVER = "deliver"


@dataclass
class JobPlace:
    """One admitted job: its arrival number, its stage, and when each stage began."""

    job_id: str
    number: int
    stage: str = Stage.PREPARE
    holds_slot: bool = False
    began: dict[str, float] = field(default_factory=dict)  # stage -> time.monotonic() it began

    def enter(self, stage: str) -> None:
        self.stage = stage
        self.began[stage] = time.monotonic()


class JobPipeline:
    """Admission (JOB_CONCURRENCY places) and ComfyUI's execute slot, in arrival order."""

    def __init__(self, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError("a worker holds at least one job")
        self.concurrency = concurrency
        self._places = threading.Semaphore(concurrency)
        self._changed = threading.Condition()
        self._numbers = itertools.count(1)
        self._turns: list[JobPlace] = []  # admitted jobs that have not had the slot yet, in arrival order
        self._holder: JobPlace | None = None
        self._current: list[JobPlace] = []

    @property
    def pipelined(self) -> bool:
        """True when jobs take the slot only to execute (JOB_CONCURRENCY above 1)."""
        return self.concurrency > 1

    @contextmanager
    def admit(self, job_id: str) -> Iterator[JobPlace]:
        """Hold one of the worker's places for a job, and its turn for the slot; both are given
        up on the way out, whatever happened."""
        self._places.acquire()
        with self._changed:
            place = JobPlace(job_id, next(self._numbers))
            place.enter(Stage.PREPARE)
            self._turns.append(place)
            self._current.append(place)
        try:
            yield place
        finally:
            with self._changed:
                if self._holder is place:
                    self._holder = None
                place.holds_slot = False
                if place in self._turns:
                    self._turns.remove(place)  # it never executed: the next job's turn comes
                self._current.remove(place)
                self._changed.notify_all()
            self._places.release()

    def take_slot(self, place: JobPlace, cancel: threading.Event | None = None) -> float:
        """Wait until every job that arrived before this one has had the slot and let go of it;
        then hold it. Returns the seconds waited. A cancellation while waiting raises JobCancelled."""
        started = time.monotonic()
        with self._changed:
            if place.holds_slot:
                return 0.0
            place.enter(Stage.WAIT)
            while self._holder is not None or not self._turns or self._turns[0] is not place:
                if cancel is not None and cancel.is_set():
                    raise JobCancelled("the job was cancelled while it waited for ComfyUI",
                                       details={"stage": Stage.WAIT})
                self._changed.wait(SLOT_POLL_S)
            self._turns.remove(place)
            self._holder = place
            place.holds_slot = True
            place.enter(Stage.EXECUTE)
        return time.monotonic() - started

    def leave_slot(self, place: JobPlace) -> None:
        """Hand the slot to the next job in arrival order; `place` goes on to deliver."""
        with self._changed:
            if self._holder is place:
                self._holder = None
            place.holds_slot = False
            place.enter(Stage.DELIVER)
            self._changed.notify_all()

    def current(self) -> list[tuple[str, str]]:
        """(job id, stage) of every job the worker holds, in arrival order."""
        with self._changed:
            return [(place.job_id, place.stage) for place in self._current]
