"""A three-step pipeline end to end: template tasks -> dispatcher -> RunPod emulator -> the
REAL handler.py in platform mode -> a real CPU ComfyUI -> outputs uploaded to an
S3-protocol server (moto) -> each step's output URL fed to the next step. A second
pipeline whose first step fails: its other steps fail with that reason and never run."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from supabase_sync.config import OutputDelivery, Route, RoutingTable
from tests.comfy_env import free_port, make_comfy_copy, worker_env
from tests.supabase_sync.harness import ENDPOINT, ROOT, make_settings, running, wait_for
from tests.supabase_sync.test_e2e_handler import s3_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.comfy
EXAMPLES = str(Path(__file__).resolve().parents[2] / "templates")
GREEN = 0x00FF00


def test_a_three_step_pipeline_runs_on_the_real_handler_and_a_failing_first_step_fails_the_rest(
        db, emulator, s3_server, tmp_path):  # noqa: F811
    # generate -> invert -> upscale, each step's input the previous step's uploaded output
    generate = db.insert_task("comfy", {"template": "solid_image@1",
                                        "args": {"width": 16, "height": 8, "color": GREEN, "prefix": "gen"}})
    invert = db.insert_task("comfy", {"template": "invert_image", "args": {"image_url": {"from_task": generate, "output": 0}}})
    upscale = db.insert_task("comfy", {"template": "upscale_image",
                                       "args": {"image_url": {"from_task": invert}, "scale": 2, "method": "nearest-exact"}})
    # the same shape, but its first step raises inside ComfyUI (no retries)
    broken = db.insert_task("comfy", {"workflow": {
        "1": {"class_type": "TestRaise", "inputs": {"message": "the generator exploded"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}}}}, max_attempts=1)
    after_broken = db.insert_task("comfy", {"template": "invert_image", "args": {"image_url": {"from_task": broken}}})
    last = db.insert_task("comfy", {"template": "upscale_image", "args": {"image_url": {"from_task": after_broken}}})
    assert [db.task(t)["status"] for t in (invert, upscale, after_broken, last)] == ["waiting"] * 4

    comfy_path = make_comfy_copy(tmp_path / "ComfyUI")
    env = worker_env(
        comfy_path, free_port(), **emulator.worker_env(ENDPOINT, "pod-pipeline"),
        BUCKET_ENDPOINT_URL=s3_server, BUCKET_ACCESS_KEY_ID="test", BUCKET_SECRET_ACCESS_KEY="test",
        ALLOW_PRIVATE_URLS="true",  # the dependencies' outputs are on the loopback S3 server
    )
    log_path = tmp_path / "handler.log"
    with open(log_path, "wb") as log:
        handler = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"],
                                         output=OutputDelivery(mode="s3", bucket="outputs", prefix="tasks"))])
    settings = make_settings(db, emulator, routing=routing, STATUS_CHECK_INTERVAL="2", WORKFLOW_TEMPLATE_DIRS=EXAMPLES)
    finished = ("complete", "failed", "cancelled")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: all(db.task(t)["status"] in finished for t in (upscale, last)) or handler.poll() is not None,
                           timeout_s=240, interval_s=0.2, what="both pipelines to finish")

    try:
        asyncio.run(scenario())
        rows = {t: db.task(t) for t in (generate, invert, upscale, broken, after_broken, last)}
        assert [rows[t]["status"] for t in (generate, invert, upscale)] == ["complete"] * 3, \
            f"{[(rows[t]['status'], rows[t]['error_message']) for t in rows]}\n{log_path.read_text()[-3000:]}"
    finally:
        handler.terminate()
        try:
            handler.wait(30)
        except subprocess.TimeoutExpired:
            handler.kill()
            handler.wait(10)

    # step 2 was given step 1's uploaded file, step 3 step 2's; each ran once, after the one before
    [job2], [job3] = emulator.submissions_for(invert), emulator.submissions_for(upscale)
    assert job2.input["inputs"] == [{"node": "1", "field": "image", "url": rows[generate]["output_url"], "kind": "image"}]
    assert job3.input["inputs"][0]["url"] == rows[invert]["output_url"]
    assert rows[invert]["started_at"] >= rows[generate]["completed_at"]
    assert rows[upscale]["started_at"] >= rows[invert]["completed_at"]
    assert [rows[t]["resolved_template"] for t in (generate, invert, upscale)] == \
        ["solid_image@1", "invert_image@1", "upscale_image@1"]
    # the last output really is the first one inverted and scaled: green 16x8 -> magenta 32x16
    final = Image.open(io.BytesIO(httpx.get(rows[upscale]["output_url"], timeout=10).content)).convert("RGB")
    assert final.size == (32, 16) and final.getpixel((5, 5)) == (255, 0, 255)

    # the failing pipeline: ComfyUI's error, then each later step names the step before it
    assert rows[broken]["status"] == "failed" and "the generator exploded" in rows[broken]["error_message"]
    assert rows[after_broken]["error_message"].startswith(f"dependency {broken} failed: ")
    assert rows[after_broken]["error_message"].endswith(rows[broken]["error_message"])
    assert rows[last]["error_message"] == f"dependency {after_broken} failed: {rows[after_broken]['error_message']}"
    assert emulator.submissions_for(after_broken) == [] and emulator.submissions_for(last) == []
