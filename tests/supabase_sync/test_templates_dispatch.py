"""Template tasks through the dispatcher (real PostgreSQL, RunPod emulator): rendered and
submitted, or failed at once with every problem listed and no /run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.doubles.runpod_emulator import ScriptedWorker
from tests.supabase_sync.harness import ENDPOINT, dispatch_until, make_settings, running, wait_for
from tests.supabase_sync.test_dispatch_flow import ok_worker

EXAMPLES = str(Path(__file__).resolve().parents[2] / "templates")


def status_of(db: Any, task_id: str) -> str:
    return db.task(task_id)["status"]


def publish(db: Any, name: str, version: int, color: int) -> None:
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    parameters = {"width": {"type": "int", "default": 8, "minimum": 1, "maximum": 64, "sets": "1.width"}}
    db.sql("select publish_workflow_template(%s, %s, %s, %s, 'test')",
           (name, version, json.dumps(workflow), json.dumps(parameters)))


def test_a_template_task_is_rendered_and_the_worker_gets_a_plain_workflow_and_inputs(db, emulator):
    task_id = db.insert_task("comfy", {"template": "upscale_image@1",
                                       "args": {"image_url": "https://cdn.test/cat.png", "scale": 3},
                                       "timeout_s": 120})
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator, WORKFLOW_TEMPLATE_DIRS=EXAMPLES)

    dispatch_until(settings, lambda: status_of(db, task_id) == "complete", "complete", worker)
    [job] = emulator.submissions_for(task_id)
    assert set(job.input) == {"workflow", "inputs", "timeout_s", "task_id", "lease_token"}
    assert job.input["workflow"]["2"] == {"class_type": "ImageScaleBy",
                                          "inputs": {"image": ["1", 0], "upscale_method": "lanczos", "scale_by": 3.0}}
    assert job.input["inputs"] == [{"node": "1", "field": "image", "url": "https://cdn.test/cat.png", "kind": "image"}]
    row = db.task(task_id)
    assert row["resolved_template"] == "upscale_image@1" and row["params"]["template"] == "upscale_image@1"


def test_bad_template_tasks_fail_at_once_with_every_problem_and_nothing_is_submitted(db, emulator):
    bad_args = db.insert_task("comfy", {"template": "upscale_image", "args": {"scale": 99, "method": "sharp", "colour": 1}})
    unknown = db.insert_task("comfy", {"template": "no_such_template@2", "args": {}})
    both = db.insert_task("comfy", {"template": "invert_image", "args": {"image_url": "https://x.test/a.png"},
                                    "workflow": {"1": {"class_type": "X"}}})
    not_a_name = db.insert_task("comfy", {"template": {"name": "invert_image"}})
    stray_args = db.insert_task("comfy", {"workflow": {"1": {"class_type": "X", "inputs": {}}}, "args": {"a": 1}})
    settings = make_settings(db, emulator, WORKFLOW_TEMPLATE_DIRS=EXAMPLES)
    tasks = (bad_args, unknown, both, not_a_name, stray_args)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: all(status_of(db, t) == "failed" for t in tasks), what="all failed")
            await asyncio.sleep(0.5)  # more rounds: nothing is retried

    asyncio.run(scenario())
    assert emulator.requests.get("run", 0) == 0
    assert db.task(bad_args)["error_message"] == (
        "invalid params: 4 problems: template upscale_image@1: "
        "args.colour: unknown argument (this template takes: image_url, scale, method); "
        "args.image_url: required (image URL); args.scale: 99 is above the maximum 8.0; "
        "args.method: the string 'sharp' is not one of 'nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos'")
    assert "template 'no_such_template@2': not found" in db.task(unknown)["error_message"]
    assert "params has both `workflow` and `template`: give one" in db.task(both)["error_message"]
    assert "params.template: must be a template name or name@version" in db.task(not_a_name)["error_message"]
    assert "params has `args` but no `template`" in db.task(stray_args)["error_message"]
    assert all(db.task(t)["attempts"] == 1 for t in tasks)


def test_templates_come_from_the_table_and_queued_tasks_follow_a_new_version_unless_pinned(db, emulator):
    publish(db, "gen", 1, color=1)
    newest = db.insert_task("comfy", {"template": "gen", "args": {"width": 16}})
    pinned = db.insert_task("comfy", {"template": "gen@1"})
    publish(db, "gen", 2, color=2)  # published while both are queued
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator)  # no folders: the table only

    dispatch_until(settings, lambda: all(status_of(db, t) == "complete" for t in (newest, pinned)), "complete", worker)
    [new_job], [pinned_job] = emulator.submissions_for(newest), emulator.submissions_for(pinned)
    assert new_job.input["workflow"]["1"]["inputs"] == {"width": 16, "height": 8, "batch_size": 1, "color": 2}
    assert pinned_job.input["workflow"]["1"]["inputs"]["color"] == 1
    assert (db.task(newest)["resolved_template"], db.task(pinned)["resolved_template"]) == ("gen@2", "gen@1")


def test_when_templates_cannot_be_read_the_tasks_are_given_back_not_failed(db, emulator):
    publish(db, "gen", 1, color=0)
    task_id = db.insert_task("comfy", {"template": "gen"})
    db.postgrest.fail_next("get_workflow_templates", 2)  # PostgREST overloaded for two rounds
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator, POLL_INTERVAL="0.1")

    dispatch_until(settings, lambda: status_of(db, task_id) == "complete", "complete", worker)
    assert db.postgrest._failures["get_workflow_templates"] == 0  # both failures were met
    row = db.task(task_id)
    assert row["attempts"] == 1 and len(emulator.submissions_for(task_id)) == 1  # the given-back claims did not count
