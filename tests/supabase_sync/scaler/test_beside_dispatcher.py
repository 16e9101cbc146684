"""The scaler beside the real dispatcher: a burst goes through the emulator, the scaler
follows it up and down, and the dispatcher's /metrics shows every decision."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from supabase_sync.runpod_api import RunPodClient
from supabase_sync.scaler.runpod_management import RunpodManagementClient
from supabase_sync.scaler.rule import ScalingRule
from supabase_sync.scaler.config import ScaledEndpoint
from supabase_sync.scaler.service import Scaler, SupabaseDecisionLog, SupabaseQueueCounts
from supabase_sync.store import TaskStore
from tests.supabase_sync.harness import make_settings, running, wait_for
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.scaler.conftest import API_KEY

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


async def _no_sleep(seconds: float) -> None:
    pass


def test_a_burst_through_the_dispatcher_scales_up_then_down_and_shows_in_its_metrics(db, emulator, management, clock):
    management.add_endpoint("EPA", workers_min=0, workers_max=3)
    release = threading.Event()

    def gated_worker(job_input: Any, progress: Any) -> dict[str, Any]:
        release.wait(30)
        task = job_input["task_id"]
        return {"outputs": [{"node_id": "2", "kind": "image", "filename": f"{task}.png",
                             "url": f"https://cdn.test/{task}.png"}]}

    worker = ScriptedWorker(emulator, "EPA", gated_worker, concurrency=2).start()
    settings = make_settings(db, emulator, routes="comfy=EPA")
    rule = ScalingRule(max_workers=4, scale_down_grace_s=60)

    async def scenario() -> None:
        store = await TaskStore.connect(db.url, db.service_key)
        runpod = RunPodClient(API_KEY, base_url=emulator.api_base_url)
        management_client = RunpodManagementClient(API_KEY, base_url=emulator.url, sleep=_no_sleep)
        scaler = Scaler([ScaledEndpoint(endpoint_id="EPA", task_types=("comfy",), rule=rule)],
                        SupabaseQueueCounts(store.client), runpod, management_client, clock=clock,
                        decision_log=SupabaseDecisionLog(store.client))
        try:
            async with running(settings) as base:
                task_ids = [db.insert_task("comfy", {"workflow": WORKFLOW}) for _ in range(6)]
                await wait_for(lambda: emulator.requests.get("run", 0) >= 6, what="6 jobs submitted")
                await scaler.run_pass()
                assert management.workers("EPA") == {"min": 4, "max": 4, "idleTimeout": 5}

                release.set()
                await wait_for(lambda: all(db.task(t)["status"] == "complete" for t in task_ids), what="complete")
                await scaler.run_pass()
                assert management.workers("EPA")["min"] == 4  # within the grace period
                clock.advance(60)
                await scaler.run_pass()
                assert management.workers("EPA") == {"min": 0, "max": 4, "idleTimeout": 5}

                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"{base}/metrics")).text
        finally:
            await management_client.aclose()
            await runpod.aclose()
            await store.aclose()
        for line in ('supabase_sync_scaler_workers{endpoint_id="EPA",limit="min",setting="applied"} 0',
                     'supabase_sync_scaler_workers{endpoint_id="EPA",limit="max",setting="applied"} 4',
                     'supabase_sync_scaler_workers{endpoint_id="EPA",limit="min",setting="desired"} 0',
                     'supabase_sync_scaler_input{endpoint_id="EPA",input="workload"} 0',
                     'supabase_sync_scaler_scale_down_pending{endpoint_id="EPA"} 0',
                     'supabase_sync_scaler_changes_total{endpoint_id="EPA"} 2',
                     'supabase_sync_scaler_failures_total{endpoint_id="EPA"} 0'):
            assert line in metrics.splitlines(), line
        assert 'supabase_sync_scaler_last_decision_timestamp_seconds{endpoint_id="EPA",outcome="applied"}' in metrics

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        worker.stop()
