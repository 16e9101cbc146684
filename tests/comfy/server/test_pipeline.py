"""The worker's pipeline on its own: admission to JOB_CONCURRENCY places, and ComfyUI's one
slot handed out in arrival order (no ComfyUI needed: the jobs here are threads)."""

from __future__ import annotations

import threading
import time

import pytest

from comfy.errors import JobCancelled
from comfy.server.pipeline import JobPipeline, Stage


def _until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_with_concurrency_one_a_second_job_waits_until_the_first_has_left():
    pipeline = JobPipeline(1)
    events: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def first() -> None:
        with pipeline.admit("a") as place:
            pipeline.take_slot(place)
            events.append("a in")
            first_in.set()
            release.wait(10)
            events.append("a out")

    def second() -> None:
        with pipeline.admit("b"):
            events.append("b in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    first_in.wait(10)
    threads[1].start()
    time.sleep(0.2)
    assert events == ["a in"]  # b is not even admitted while a holds the worker
    release.set()
    for thread in threads:
        thread.join(10)
    assert events == ["a in", "a out", "b in"]
    assert not pipeline.pipelined


def test_the_slot_goes_in_arrival_order_even_to_jobs_that_finish_preparing_later():
    pipeline = JobPipeline(3)
    order: list[str] = []
    admitted = {name: threading.Event() for name in "abc"}
    prepared = {name: threading.Event() for name in "abc"}

    def job(name: str) -> None:
        with pipeline.admit(name) as place:
            admitted[name].set()
            prepared[name].wait(10)
            pipeline.take_slot(place)
            order.append(name)
            time.sleep(0.05)
            pipeline.leave_slot(place)

    threads = []
    for name in "abc":  # a, b, c arrive in this order
        threads.append(threading.Thread(target=job, args=(name,)))
        threads[-1].start()
        admitted[name].wait(10)
    prepared["c"].set()
    prepared["b"].set()
    time.sleep(0.3)
    assert order == []  # c and b are ready, but a arrived first and is still preparing
    assert [stage for _, stage in pipeline.current()] == [Stage.PREPARE, Stage.WAIT, Stage.WAIT]
    prepared["a"].set()
    for thread in threads:
        thread.join(10)
    assert order == ["a", "b", "c"]
    assert pipeline.current() == []


def test_a_job_that_leaves_before_executing_hands_its_turn_on():
    pipeline = JobPipeline(2)
    got_slot = threading.Event()
    with pipeline.admit("fails-in-prepare"):
        def later() -> None:
            with pipeline.admit("later") as place:
                pipeline.take_slot(place)
                got_slot.set()
        thread = threading.Thread(target=later)
        thread.start()
        _until(lambda: [s for _, s in pipeline.current()] == [Stage.PREPARE, Stage.WAIT], "the later job waiting")
        assert not got_slot.wait(0.2)  # behind the first one's turn
    thread.join(10)  # the first left without executing: its turn went with it
    assert got_slot.is_set()


def test_one_job_holds_the_slot_at_a_time_and_delivers_outside_it():
    pipeline = JobPipeline(2)
    inside = []
    overlap = []

    def job(name: str) -> None:
        with pipeline.admit(name) as place:
            pipeline.take_slot(place)
            inside.append(name)
            overlap.append(len(inside))
            time.sleep(0.1)
            inside.remove(name)
            pipeline.leave_slot(place)
            assert place.stage is Stage.DELIVER and not place.holds_slot
            time.sleep(0.1)  # delivering while the other executes

    threads = [threading.Thread(target=job, args=(name,)) for name in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert overlap == [1, 1, 1, 1]


def test_a_job_cancelled_while_waiting_for_the_slot_leaves_at_once_and_the_holder_keeps_it():
    pipeline = JobPipeline(2)
    cancel = threading.Event()
    outcome: dict = {}
    with pipeline.admit("running") as running:
        pipeline.take_slot(running)

        def waiting() -> None:
            with pipeline.admit("waiting") as place:
                try:
                    pipeline.take_slot(place, cancel)
                except JobCancelled as exc:
                    outcome["error"] = exc
        thread = threading.Thread(target=waiting)
        thread.start()
        _until(lambda: len(pipeline.current()) == 2, "the second job")
        started = time.monotonic()
        cancel.set()
        thread.join(5)
        assert time.monotonic() - started < 1.0
        assert outcome["error"].error_type == "cancelled" and outcome["error"].details == {"stage": "wait"}
        assert running.holds_slot and pipeline.current() == [("running", Stage.EXECUTE)]


def test_a_worker_holds_at_least_one_job():
    with pytest.raises(ValueError):
        JobPipeline(0)
