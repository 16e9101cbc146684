"""End to end: the seed's INSERT -> dispatcher -> RunPod emulator -> the REAL handler.py in
RunPod platform mode (job-take / job-done) -> a real CPU ComfyUI -> outputs uploaded to an
S3-protocol server (moto) -> the row complete with output_url; then
the seed's monitoring queries show the task and the worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from supabase_sync.config import OutputDelivery, Route, RoutingTable
from tests.comfy_env import free_port, make_comfy_copy, worker_env
from tests.supabase_sync.harness import ENDPOINT, ROOT, make_settings, running, wait_for, wait_for_sync
from tests.supabase_sync.test_schema import SEED_OUTPUT_QUERY, SEED_TASKS_QUERY, SEED_WORKERS_QUERY

pytestmark = pytest.mark.comfy

# The seed's INSERT, with a workflow that needs no model weights and no custom nodes.
SEED_STYLE_INSERT = """
INSERT INTO tasks (task_type, params, status)
VALUES (
  'comfy',
  '{
    "workflow": {
      "1": {"inputs": {"width": 16, "height": 16, "batch_size": 1, "color": %s}, "class_type": "EmptyImage"},
      "2": {"inputs": {"image": ["1", 0]}, "class_type": "ImageInvert"},
      "3": {"inputs": {"images": ["2", 0], "filename_prefix": "e2e/out"}, "class_type": "SaveImage"}
    }
  }',
  'queued'
)
RETURNING task_id;
"""


@pytest.fixture()
def s3_server(tmp_path):
    """A real S3-protocol server on loopback (moto), with an `outputs` bucket."""
    import boto3

    port = free_port()
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_sync(lambda: _answers(url), timeout_s=30, what="moto_server")
        boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket="outputs")
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def test_a_seed_task_runs_on_the_real_handler_and_comfyui(db, emulator, s3_server, tmp_path):
    comfy_path = make_comfy_copy(tmp_path / "ComfyUI")
    env = worker_env(
        comfy_path, free_port(), **emulator.worker_env(ENDPOINT, "pod-e2e"),
        SUPABASE_URL=db.url, SUPABASE_SERVICE_ROLE_KEY=db.service_key, HEARTBEAT_INTERVAL="0.5",
        BUCKET_ENDPOINT_URL=s3_server, BUCKET_ACCESS_KEY_ID="test", BUCKET_SECRET_ACCESS_KEY="test",
        ALLOW_PRIVATE_URLS="true",
    )
    log_path = tmp_path / "handler.log"
    with open(log_path, "wb") as log:
        handler = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    # the route tells the worker to upload outputs to the bucket under tasks/<task_id>/
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"],
                                         output=OutputDelivery(mode="s3", bucket="outputs", prefix="tasks"))])
    settings = make_settings(db, emulator, routing=routing, STATUS_CHECK_INTERVAL="2")
    task_id = str(db.sql(SEED_STYLE_INSERT % 1234567)[0]["task_id"])

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: db.task(task_id)["status"] in ("complete", "failed") or handler.poll() is not None,
                           timeout_s=180, interval_s=0.2, what="the task to finish")

    try:
        asyncio.run(scenario())
        row = db.task(task_id)
        assert row["status"] == "complete", f"{row['status']}: {row['error_message']}\n{log_path.read_text()[-3000:]}"
    finally:
        handler.terminate()
        try:
            handler.wait(30)
        except subprocess.TimeoutExpired:
            handler.kill()
            handler.wait(10)

    [job] = emulator.submissions_for(task_id)
    assert job.input["task_id"] == task_id and job.worker_id == "pod-e2e"
    assert job.input["output"] == {"mode": "s3", "bucket": "outputs", "prefix": f"tasks/{task_id}"}
    output = row["result"]["output"]
    [image] = [o for o in output["outputs"] if o["node_id"] == "3"]
    assert image["filename"].startswith("out") and image["content_type"] == "image/png"
    assert row["runpod_job_id"] == job.id
    # the worker passed the start fence (start_task) with the claim the job input carried
    assert job.input["lease_token"] == str(row["lease_token"]) and row["worker_started_at"] is not None
    # output_url is the primary output's URL, and it serves the stored PNG
    assert row["output_url"] == image["url"]
    stored = httpx.get(row["output_url"], timeout=10)
    assert stored.status_code == 200 and stored.content.startswith(b"\x89PNG")
    assert f"tasks/{task_id}/" in row["output_url"]
    # The seed's monitoring queries, unchanged
    tasks = db.sql(SEED_TASKS_QUERY)
    assert [(str(t["task_id"]), t["status"]) for t in tasks] == [(task_id, "complete")]
    assert tasks[0]["started_at"] <= tasks[0]["completed_at"]
    assert db.sql(SEED_OUTPUT_QUERY, (task_id,)) == [{"output_url": row["output_url"]}]
    [worker] = db.sql(SEED_WORKERS_QUERY)
    assert worker["id"] == "comfy-worker-pod-e2e" and worker["current_task_id"] is None
    assert json.dumps(worker["status"]) in ('"idle"', '"stopped"')
