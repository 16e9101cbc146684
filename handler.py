"""RunPod serverless entry point: one ComfyUI per container, one workflow per job.

ComfyUI is started first, before the heavy imports (runpod takes ~2 s to import), so its
boot overlaps the worker's. The handler is async: RunPod's job polling and cancellation
keep working while the blocking job runs in a thread.

    python handler.py                          # run test_input.json once (exit 0 / 1)
    python handler.py --test_input '<json>'    # run that job once
    python handler.py --rp_serve_api           # RunPod's local API server
"""

import logging
import sys

from comfy.settings import SettingsError, WorkerSettings
from comfy.server.process import ComfyProcess, ComfyStartError

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("worker")

try:
    SETTINGS = WorkerSettings.from_env()
except SettingsError as exc:
    sys.exit(f"worker: {exc}")

PROCESS = None if SETTINGS.attach_mode else ComfyProcess(SETTINGS)
if PROCESS is not None:
    try:
        PROCESS.start()
    except ComfyStartError as exc:  # every job reports it (and retries the start)
        log.error("%s", exc)

import asyncio  # noqa: E402  (after ComfyUI's start, on purpose)
import atexit  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import runpod  # noqa: E402

from comfy.job.run import run_job  # noqa: E402
from comfy.server.runtime import WorkerRuntime  # noqa: E402
from comfy.worker.heartbeat import WorkerHeartbeat  # noqa: E402

RUNTIME = WorkerRuntime(SETTINGS, PROCESS)
# The worker's row in `workers` (seed monitoring); a no-op without Supabase credentials.
HEARTBEAT = WorkerHeartbeat.from_env().start()
atexit.register(HEARTBEAT.stop)


def _progress_sender(job: dict[str, Any]):
    """Progress goes to RunPod's /status; off the platform there is nowhere to send it."""
    if not os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        return None
    return lambda progress: runpod.serverless.progress_update(job, progress)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Run one RunPod job; a failure comes back as {"error": ..., "details": ...}."""
    cancel = threading.Event()
    job_input = job.get("input")
    HEARTBEAT.set_current_task(job_input.get("task_id") if isinstance(job_input, dict) else None)
    try:
        return await asyncio.to_thread(run_job, RUNTIME, job_input, str(job["id"]), _progress_sender(job), cancel)
    except asyncio.CancelledError:
        cancel.set()  # the job thread interrupts ComfyUI and removes the prompt
        raise
    finally:
        HEARTBEAT.set_current_task(None)


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
