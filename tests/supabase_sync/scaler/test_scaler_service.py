"""The scaler against a real PostgreSQL (through the PostgREST double and the real supabase
client) and the RunPod emulator serving /health and the management API."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from uuid import UUID

from supabase_sync.runpod_api import RetryPolicy, RunPodClient
from supabase_sync.scaler.runpod_management import RunpodManagementClient
from supabase_sync.scaler.rule import ScalingRule, WorkerLimits
from supabase_sync.scaler.config import ScaledEndpoint
from supabase_sync.scaler.service import PassResult, Scaler, SupabaseQueueCounts, describe
from supabase_sync.store import TaskStore
from tests.supabase_sync.scaler.conftest import API_KEY, FakeClock


async def _no_sleep(seconds: float) -> None:
    pass


def endpoint(endpoint_id: str = "EPA", task_types: tuple[str, ...] = ("comfy",), **rule: Any) -> ScaledEndpoint:
    return ScaledEndpoint(endpoint_id=endpoint_id, task_types=task_types, rule=ScalingRule(**rule))


@asynccontextmanager
async def scaler_for(db, emulator, clock: FakeClock, endpoints: list[ScaledEndpoint], *, dry_run: bool = False,
                     runpod_key: str = API_KEY) -> AsyncIterator[tuple[Scaler, TaskStore, RunPodClient, list[PassResult]]]:
    store = await TaskStore.connect(db.url, db.service_key)
    runpod = RunPodClient(runpod_key, base_url=emulator.api_base_url, retry=RetryPolicy(attempts=2, base_delay_s=0.01))
    management = RunpodManagementClient(API_KEY, base_url=emulator.url, attempts=2, backoff_s=0.01, sleep=_no_sleep)
    results: list[PassResult] = []
    scaler = Scaler(endpoints, SupabaseQueueCounts(store.client), runpod, management, dry_run=dry_run, clock=clock,
                    listeners=[results.append])
    try:
        yield scaler, store, runpod, results
    finally:
        await management.aclose()
        await runpod.aclose()
        await store.aclose()


async def dispatch(store: TaskStore, runpod: RunPodClient, endpoint_id: str, task_types: list[str], count: int):
    """What the dispatcher does with queued tasks: claim them, submit /run, attach the job id."""
    claimed = await store.claim_tasks("test-dispatcher", endpoint_id, task_types, count, None, 600)
    jobs = []
    for task in claimed:
        job_id = await runpod.run(endpoint_id, {"task_id": str(task.task_id)})
        jobs.append((task.task_id, task.lease_token, job_id))
    await store.attach_runpod_jobs(jobs, 30)
    return jobs


async def finish(store: TaskStore, emulator, jobs: list[tuple[UUID, UUID, str]]) -> None:
    """A worker finishes each job and the dispatcher writes the result back."""
    for task_id, lease, job_id in jobs:
        emulator.finish_job(job_id, output={"ok": True})
        assert await store.complete_task(task_id, lease, job_id, "http://storage/out.png", {"ok": True}) == "applied"


def patched(management, endpoint_id: str = "EPA") -> list[tuple[int, int]]:
    return [(c.workers["min"], c.workers["max"]) for c in management.patches(endpoint_id)]


def test_burst_up_then_down_after_the_grace_period(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)
    rule = dict(min_workers=0, max_workers=5, scale_up_multiplier=1.0, keep_idle=0, scale_down_grace_s=60)

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [endpoint(**rule)]) as (scaler, store, runpod, results):
            await scaler.run_pass()
            assert patched(management) == [(0, 5)]  # idle: no warm workers, the cap raised to max_workers

            for _ in range(3):
                db.insert_task("comfy")
            db.insert_task("vace")  # not routed to EPA: not its workload
            await scaler.run_pass()
            assert patched(management)[-1] == (3, 5)

            for _ in range(10):
                db.insert_task("comfy")
            await scaler.run_pass()
            assert patched(management)[-1] == (5, 5)  # 13 tasks, capped at max_workers

            jobs = await dispatch(store, runpod, "EPA", ["comfy"], 13)
            for n in range(5):
                assert emulator.take_job("EPA", worker_id=f"worker-{n}") is not None
            await scaler.run_pass()
            assert results[-1].outcome == "unchanged" and len(patched(management)) == 3

            # The burst is over but for one job still running on a worker.
            running = [j for j in jobs if emulator.jobs[j[2]].status == "IN_PROGRESS"]
            await finish(store, emulator, [j for j in jobs if j not in running[:1]])
            await scaler.run_pass()
            assert results[-1].outcome == "unchanged" and "pending" in results[-1].decision.reason
            clock.advance(59)
            await scaler.run_pass()
            assert len(patched(management)) == 3
            clock.advance(1)
            await scaler.run_pass()
            assert patched(management)[-1] == (1, 5)  # never below the busy worker

            await finish(store, emulator, running[:1])
            await scaler.run_pass()
            clock.advance(60)
            await scaler.run_pass()
            assert patched(management) == [(0, 5), (3, 5), (5, 5), (1, 5), (0, 5)]
            assert management.workers("EPA") == {"min": 0, "max": 5, "idleTimeout": 5}

    asyncio.run(scenario())


def test_each_endpoint_is_sized_from_its_own_task_types(db, emulator, management, clock):
    management.add_endpoint("EPA")
    management.add_endpoint("EPB")
    endpoints = [endpoint("EPA", ("comfy",), max_workers=10), endpoint("EPB", ("vace", "flux"), max_workers=10)]

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, endpoints) as (scaler, *_):
            db.insert_task("comfy")
            for task_type in ("vace", "flux", "flux", "t2v"):
                db.insert_task(task_type)
            await scaler.run_pass()
        assert management.workers("EPA")["min"] == 1
        assert management.workers("EPB")["min"] == 3

    asyncio.run(scenario())


def test_low_priority_backlog_does_not_make_the_endpoint_scale(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=4)
    scaled = ScaledEndpoint(endpoint_id="EPA", task_types=("comfy",), backlog_task_types=("t2v",),
                            rule=ScalingRule(max_workers=4))

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [scaled]) as (scaler, store, runpod, results):
            for _ in range(5):
                db.insert_task("t2v")
            await dispatch(store, runpod, "EPA", ["t2v"], 3)  # 3 backlog jobs in RunPod's queue
            await scaler.run_pass()
            assert results[-1].outcome == "unchanged" and results[-1].decision.load.workload == 0
            assert "backlog_queued=2 backlog_in_progress=3" in describe(results[-1])
            db.insert_task("comfy")
            await scaler.run_pass()
            assert patched(management) == [(1, 4)]

    asyncio.run(scenario())


def test_min_and_max_limits_are_respected(db, emulator, management, clock):
    management.add_endpoint("EPA")

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [endpoint(min_workers=1, max_workers=4)]) as (scaler, *_):
            await scaler.run_pass()
            assert management.workers("EPA")["min"] == 1  # idle, but kept at min_workers
            for _ in range(50):
                db.insert_task("comfy")
            await scaler.run_pass()
            assert (management.workers("EPA")["min"], management.workers("EPA")["max"]) == (4, 4)

    asyncio.run(scenario())


def test_never_below_the_workers_busy_with_a_job(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=2)

    async def scenario() -> None:
        rule = dict(max_workers=2, scale_down_grace_s=0)
        async with scaler_for(db, emulator, clock, [endpoint(**rule)]) as (scaler, store, runpod, _):
            for _ in range(3):
                db.insert_task("comfy")
            jobs = await dispatch(store, runpod, "EPA", ["comfy"], 3)
            for n in range(3):  # e.g. started before max_workers was lowered to 2
                emulator.take_job("EPA", worker_id=f"worker-{n}")
            await scaler.run_pass()
            assert management.workers("EPA")["max"] == 3 and management.workers("EPA")["min"] == 2
            await scaler.run_pass()  # still busy: nothing lowered even with no grace
            assert patched(management) == [(2, 3)]
            await finish(store, emulator, jobs)
            await scaler.run_pass()
            assert patched(management) == [(2, 3), (0, 2)]

    asyncio.run(scenario())


def test_unchanged_target_makes_no_api_call(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [endpoint(max_workers=3)]) as (scaler, *_):
            db.insert_task("comfy")
            await scaler.run_pass()
            assert management.requests == [("GET", "EPA"), ("PATCH", "EPA")]
            for _ in range(3):
                await scaler.run_pass()
            assert management.requests == [("GET", "EPA"), ("PATCH", "EPA")]

    asyncio.run(scenario())


def test_429_and_5xx_keep_the_last_good_setting_and_are_retried_next_pass(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=5)

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [endpoint(max_workers=5, scale_down_grace_s=30)]) as (
            scaler, store, runpod, results,
        ):
            await scaler.run_pass()  # reads the current setting, which already fits: no change
            assert results[-1].outcome == "unchanged" and management.requests == [("GET", "EPA")]
            db.insert_task("comfy")
            db.insert_task("comfy")
            management.fail_next(2, status=429, retry_after=0)  # both attempts of the client
            await scaler.run_pass()
            assert results[-1].outcome == "apply_failed" and "429" in results[-1].error
            assert scaler.current("EPA") == WorkerLimits(0, 5, idle_timeout_s=5)
            assert management.workers("EPA")["min"] == 0 and patched(management) == []

            await scaler.run_pass()
            assert results[-1].outcome == "applied" and patched(management) == [(2, 5)]

            # Scale down is due after the grace; the API fails; the next pass applies it
            # at once instead of starting a new grace period.
            jobs = await dispatch(store, runpod, "EPA", ["comfy"], 2)
            await finish(store, emulator, jobs)
            await scaler.run_pass()
            clock.advance(30)
            management.fail_next(2, status=503)
            await scaler.run_pass()
            assert results[-1].outcome == "apply_failed" and "503" in results[-1].error
            assert scaler.current("EPA").min == 2 and management.workers("EPA")["min"] == 2
            await scaler.run_pass()
            assert results[-1].outcome == "applied" and patched(management) == [(2, 5), (0, 5)]

    asyncio.run(scenario())


def test_dry_run_reports_each_decision_and_changes_nothing(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [endpoint(max_workers=3)], dry_run=True) as (scaler, *_, results):
            for _ in range(2):
                db.insert_task("comfy")
            await scaler.run_pass()
            await scaler.run_pass()  # goes on as if the first had applied: nothing more to do
        result, second = results
        assert second.outcome == "unchanged"
        assert result.outcome == "dry_run" and result.decision.target == WorkerLimits(2, 3)
        line = describe(result)
        for expected in ("endpoint=EPA", "outcome=dry_run", "queued=2", "in_progress=0", "workers_running=0",
                         "current=0/3 idle=5s", "target=2/3", "reason='scale up'"):
            assert expected in line
        assert management.patches() == [] and management.workers("EPA")["min"] == 0
        assert management.requests == [("GET", "EPA")]

    asyncio.run(scenario())


def test_an_endpoint_that_cannot_be_observed_is_left_alone(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=2, workers_max=3)

    async def scenario() -> None:
        async with scaler_for(db, emulator, clock, [endpoint(max_workers=3, scale_down_grace_s=0)],
                              runpod_key="wrong-key") as (scaler, *_, results):
            await scaler.run_pass()
        assert results[-1].outcome == "observe_failed" and "401" in results[-1].error
        assert management.requests == [] and management.workers("EPA")["min"] == 2

    asyncio.run(scenario())
