"""JOB_CONCURRENCY for the SDK, and where `refresh_worker` goes while several jobs are on the worker.
(The SDK's own list of jobs in flight is stood in for by a set; the platform-mode tests in
tests/comfy/job/test_pipelined_platform.py run the real one.)"""

from __future__ import annotations

from comfy.worker.concurrency import SdkConcurrency, sdk_jobs_in_flight


class InFlight:
    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)

    def __call__(self) -> set[str]:
        return set(self.ids)


def test_concurrency_one_changes_nothing_the_sdk_does():
    concurrency = SdkConcurrency(1, InFlight("a", "b", "c"))
    assert concurrency.start_config() == {}  # the SDK's own default: one job, /job-take
    result = {"error": "x", "refresh_worker": True}
    assert concurrency.settle_refresh(result, "a") == {"error": "x", "refresh_worker": True}
    assert not concurrency.draining


def test_pipelined_the_sdk_may_hold_job_concurrency_jobs():
    concurrency = SdkConcurrency(3, InFlight())
    modifier = concurrency.start_config()["concurrency_modifier"]
    assert modifier(1) == 3 and modifier(3) == 3


def test_a_refresh_asked_while_other_jobs_run_waits_for_the_last_of_them():
    in_flight = InFlight("crashed", "second", "last")
    concurrency = SdkConcurrency(3, in_flight)
    for job in ("crashed", "second", "last"):
        concurrency.job_started(job)

    crashed = concurrency.settle_refresh({"error": "ComfyUI died", "refresh_worker": True}, "crashed")
    assert "refresh_worker" not in crashed  # stopPod now would take the other two jobs down
    assert concurrency.modifier(3) == 0  # and the worker takes no more jobs
    in_flight.ids = {"second", "last"}
    assert "refresh_worker" not in concurrency.settle_refresh({"images": []}, "second")
    in_flight.ids = {"last"}
    assert concurrency.settle_refresh({"images": []}, "last")["refresh_worker"] is True
    in_flight.ids = set()
    assert concurrency.modifier(0) == 0  # replaced soon: no job is taken meanwhile


def test_a_refresh_no_job_could_carry_makes_the_worker_take_one_job_to_carry_it():
    in_flight = InFlight("hung", "other")
    concurrency = SdkConcurrency(2, in_flight)
    concurrency.job_started("hung")
    concurrency.job_started("other")
    concurrency.settle_refresh({"error": "hung", "refresh_worker": True}, "hung")
    in_flight.ids = set()  # the other job was cancelled: it returned no result
    assert concurrency.modifier(0) == 1
    in_flight.ids = {"carrier"}
    concurrency.job_started("carrier")
    assert concurrency.modifier(1) == 0
    assert concurrency.settle_refresh({"images": []}, "carrier")["refresh_worker"] is True
    in_flight.ids = set()
    assert concurrency.modifier(0) == 0


def test_the_concurrency_is_not_lowered_while_a_taken_job_waits_in_the_sdks_queue():
    # The SDK starts at most `current_concurrency` handler tasks: lowered to 0 while a job it took in
    # the same batch has not started, that job would stay in its queue, and the worker would wait for
    # its occupancy to reach 0 for good.
    in_flight = InFlight("crashed", "taken-late")
    concurrency = SdkConcurrency(2, in_flight)
    concurrency.job_started("crashed")
    concurrency.settle_refresh({"error": "ComfyUI died", "refresh_worker": True}, "crashed")
    in_flight.ids = {"taken-late"}
    assert concurrency.modifier(2) == 2  # unchanged: the SDK still starts it
    concurrency.job_started("taken-late")
    assert concurrency.modifier(2) == 0
    assert concurrency.settle_refresh({"images": []}, "taken-late")["refresh_worker"] is True


def test_the_sdks_count_is_read_from_its_own_job_list():
    assert sdk_jobs_in_flight() == set()  # no SDK loop in this process
