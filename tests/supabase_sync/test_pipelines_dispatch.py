"""Pipelines through the dispatcher (real PostgreSQL, RunPod emulator, scripted worker):
dependants submitted once their dependencies complete, with the outputs as URLs; the real
handler and ComfyUI run a pipeline in test_e2e_pipeline.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from supabase_sync.config import OutputDelivery, Route, RoutingTable
from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.harness import ENDPOINT, dispatch_until, make_settings, running, wait_for

EXAMPLES = str(Path(__file__).resolve().parents[2] / "templates")
RAW = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}}


def two_outputs(job_input: Any, progress: Any) -> dict[str, Any]:
    task = job_input["task_id"]
    return {"outputs": [{"node_id": "2", "key": "images", "kind": "image", "filename": "a.png", "url": f"https://cdn.test/{task}/a.png"},
                        {"node_id": "7", "key": "text", "kind": "text", "text": "hi"},
                        {"node_id": "9", "key": "images", "kind": "image", "filename": "b.png", "url": f"https://cdn.test/{task}/b.png"}]}


def test_a_dependant_runs_after_its_dependency_with_the_dependencys_outputs_as_urls(db, emulator):
    step1 = db.insert_task("comfy", RAW)
    step2 = db.insert_task("comfy", {
        "template": "upscale_image", "args": {"image_url": {"from_task": step1, "output": "9"}},
        "inputs": [],
    })
    step3 = db.insert_task("comfy", {**RAW, "video_url": {"from_task": step1}, "video_node_id": "1",
                                     "inputs": [{"node": "1", "field": "image", "url": {"from_task": step2, "output": 0}}]})
    assert sorted(str(d) for d in db.task(step3)["depends_on"]) == sorted([step1, step2])  # both references are dependencies
    worker = ScriptedWorker(emulator, ENDPOINT, two_outputs).start()
    settings = make_settings(db, emulator, WORKFLOW_TEMPLATE_DIRS=EXAMPLES)

    dispatch_until(settings, lambda: db.task(step3)["status"] in ("complete", "failed"), "step 3 done", worker)
    rows = {t: db.task(t) for t in (step1, step2, step3)}
    assert [rows[t]["status"] for t in (step1, step2, step3)] == ["complete"] * 3, rows[step3]["error_message"]
    [job2], [job3] = emulator.submissions_for(step2), emulator.submissions_for(step3)
    assert job2.input["inputs"] == [{"node": "1", "field": "image", "url": f"https://cdn.test/{step1}/b.png", "kind": "image"}]
    assert job3.input["video_url"] == f"https://cdn.test/{step1}/a.png"  # no `output`: the dependency's output_url
    assert job3.input["inputs"][0]["url"] == f"https://cdn.test/{step2}/a.png"
    assert rows[step2]["started_at"] >= rows[step1]["completed_at"]
    assert rows[step3]["started_at"] >= rows[step2]["completed_at"]


def test_a_completion_releases_its_dependants_without_waiting_for_the_next_poll(db, emulator):
    parent = db.insert_task("comfy", RAW)
    child = db.insert_task("comfy", RAW, depends_on=[parent])
    worker = ScriptedWorker(emulator, ENDPOINT, two_outputs).start()
    # no trigger and a 30 s poll: only the dispatcher's wake-up after the completion can be this quick
    settings = make_settings(db, emulator, POLL_INTERVAL="30", STATUS_CHECK_INTERVAL="30")

    dispatch_until(settings, lambda: db.task(child)["status"] == "complete", "child complete", worker, timeout_s=15)
    assert len(emulator.submissions_for(child)) == 1


def test_many_dependants_released_together_are_each_submitted_once_by_two_dispatchers(db, emulator):
    parent = db.insert_task("comfy", RAW)
    children = [db.insert_task("comfy", {**RAW, "inputs": [{"node": "1", "field": "image", "url": {"from_task": parent}}]})
                for _ in range(60)]
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"], max_in_flight=200)])
    first = make_settings(db, emulator, routing=routing, DISPATCHER_ID="d-one", CLAIM_BATCH="7")
    second = make_settings(db, emulator, routing=routing, DISPATCHER_ID="d-two", CLAIM_BATCH="7")

    async def scenario() -> None:
        async with running(first), running(second):
            await wait_for(lambda: db.task(parent)["runpod_job_id"], what="parent submitted")
            job = emulator.take_job(ENDPOINT)
            emulator.finish_job(job.id, output=two_outputs(job.input, None))
            await wait_for(lambda: len(emulator.submissions) >= 61, what="every child submitted")
            await asyncio.sleep(1.0)  # anything submitted twice would show up now

    asyncio.run(scenario())
    submitted = [job.input["task_id"] for job in emulator.submissions]
    assert sorted(submitted) == sorted([parent, *children])  # each exactly once
    assert all(db.task(c)["status"] == "in_progress" for c in children)
    assert {job.input["inputs"][0]["url"] for job in emulator.submissions if job.input["task_id"] != parent} == \
        {f"https://cdn.test/{parent}/a.png"}
    assert {db.task(c)["claimed_by"] for c in children} <= {"d-one", "d-two"}


def test_an_output_that_was_returned_inline_cannot_be_an_input_and_the_dependant_says_why(db, emulator):
    parent = db.insert_task("comfy", RAW)
    child = db.insert_task("comfy", {"template": "invert_image", "args": {"image_url": {"from_task": parent, "output": 0}}})
    inline = lambda job_input, progress: {"outputs": [{"node_id": "2", "kind": "image", "filename": "a.png", "data": "iVBO"}]}  # noqa: E731
    worker = ScriptedWorker(emulator, ENDPOINT, inline).start()
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"], output=OutputDelivery(mode="inline"))])
    settings = make_settings(db, emulator, routing=routing, WORKFLOW_TEMPLATE_DIRS=EXAMPLES)

    dispatch_until(settings, lambda: db.task(child)["status"] == "failed", "child failed", worker)
    assert db.task(parent)["status"] == "complete" and emulator.submissions_for(child) == []
    assert db.task(child)["error_message"] == (
        f"invalid params: params.args.image_url: output 0 of task {parent} (image) has no URL "
        "(its files were returned inline, not uploaded: give its route an `output` upload)")


def test_a_reference_added_to_params_after_insert_is_refused_because_it_is_no_dependency(db, emulator):
    other = db.insert_task("comfy", RAW)
    task_id = db.insert_task("comfy", RAW)
    db.sql("update tasks set params = params || jsonb_build_object('video_url', jsonb_build_object('from_task', %s::text)), "
           "status = 'queued' where task_id = %s", (other, task_id))
    db.sql("update tasks set status = 'complete' where task_id = %s", (other,))
    ghost = db.insert_task("comfy", RAW)
    db.sql("update tasks set params = params || jsonb_build_object('video_url', jsonb_build_object('from_task', %s::text)) "
           "where task_id = %s", (str(uuid.uuid4()), ghost))
    settings = make_settings(db, emulator)

    dispatch_until(settings, lambda: all(db.task(t)["status"] == "failed" for t in (task_id, ghost)), "failed")
    assert f"params.video_url: task {other} is not among this task's depends_on" in db.task(task_id)["error_message"]
    assert "does not exist" in db.task(ghost)["error_message"]


def test_metrics_show_waiting_tasks_apart_from_the_runnable_queue(db, emulator):
    import httpx

    # in flight under a live claim (a claim without a lease expiry would be recovered at once: 0090)
    blocker = db.insert_task("comfy", RAW, status="in_progress", lease_expires_at="2999-01-01")
    db.insert_task("comfy", RAW, depends_on=[blocker])
    settings = make_settings(db, emulator)

    async def scenario() -> str:
        async with running(settings) as base:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{base}/metrics")).text

    text = asyncio.run(scenario())
    assert 'supabase_sync_queue_depth{status="waiting",task_type="comfy"} 1' in text
    assert 'status="queued"' not in text
