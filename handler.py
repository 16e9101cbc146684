"""RunPod serverless entry point: one ComfyUI per container, one workflow per job.

ComfyUI is started first, before the heavy imports (runpod takes ~2 s to import), so its
boot overlaps the worker's; custom nodes from CUSTOM_NODES are installed (or found on the
volume) just before. The warm-up (WARMUP_WORKFLOW) runs before the SDK asks for jobs. The
handler is async: RunPod's job polling and cancellation keep working while the blocking
job runs in a thread. With JOB_CONCURRENCY 2-3 the SDK hands it several jobs at once, and
they take turns at ComfyUI (comfy/server/pipeline.py).

    python handler.py                          # run test_input.json once (exit 0 / 1)
    python handler.py --test_input '<json>'    # run that job once
    python handler.py --rp_serve_api           # RunPod's local API server

A one-job local run writes its outputs to ./outputs/<job id>/ and prints a summary
(comfy/worker/local_run.py).
"""

import logging
import sys

from comfy.settings import SettingsError, WorkerSettings
from comfy.server.process import ComfyProcess, ComfyStartError
from comfy.worker.boot import BootError, prepare_boot

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("worker")

try:
    SETTINGS = WorkerSettings.from_env()
    BOOT = prepare_boot(SETTINGS)  # CUSTOM_NODES, and the model folders ComfyUI is told about
except (SettingsError, BootError) as exc:
    sys.exit(f"worker: {exc}")

PROCESS = None if SETTINGS.attach_mode else ComfyProcess(BOOT.settings)
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
from comfy.worker.concurrency import SdkConcurrency  # noqa: E402
from comfy.worker.fence import TaskFence  # noqa: E402
from comfy.worker.heartbeat import WorkerHeartbeat  # noqa: E402
from comfy.worker.local_run import LocalRun  # noqa: E402
from comfy.worker.runpod_progress import RunPodProgress  # noqa: E402
from comfy.worker.warmup import WarmupReport, run_warmup  # noqa: E402

RUNTIME = WorkerRuntime(BOOT.settings, PROCESS, BOOT.custom_nodes)
WARMUP = WarmupReport()  # the warm-up's, once it ran (below, before the SDK asks for jobs)
PROGRESS = RunPodProgress()  # one kept connection for /status updates, not a thread and session each
# `python handler.py` running one job for a person: outputs to ./outputs/<job id>/, a summary.
LOCAL = LocalRun.for_process(SETTINGS, sys.argv, os.environ) if __name__ == "__main__" else None
# The worker's row in `workers` (seed monitoring); a no-op without Supabase credentials.
HEARTBEAT = WorkerHeartbeat.from_env().start()
atexit.register(HEARTBEAT.stop)
# Only the job holding its Supabase task's claim runs (start_task); a no-op without credentials.
FENCE = TaskFence.from_env()
CONCURRENCY = SdkConcurrency(SETTINGS.job_concurrency)  # JOB_CONCURRENCY for the SDK


def _progress_sender(job: dict[str, Any]):
    """Progress goes to RunPod's /status; off the platform there is nowhere to send it."""
    if not os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        return None
    return PROGRESS.sender(job, asyncio.get_running_loop())


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Run one RunPod job; a failure comes back as {"error": ..., "details": ...}."""
    job_id = str(job["id"])
    CONCURRENCY.job_started(job_id)
    cancel = threading.Event()
    job_input = job.get("input")
    # The fence first, before the job is admitted to the pipeline (prepare's start): a superseded job
    # downloads nothing and takes no place; a job that passed is the task's (start_task recorded it), so
    # nothing can supersede it while it prepares or waits for ComfyUI.
    refused = await asyncio.to_thread(FENCE.check, job_input, job_id) if FENCE.applies_to(job_input) else None
    if refused is not None:  # superseded: nothing downloaded, nothing queued in ComfyUI
        return CONCURRENCY.settle_refresh(refused, job_id)
    task_id = job_input.get("task_id") if isinstance(job_input, dict) else None
    HEARTBEAT.task_started(task_id)
    try:
        run = LOCAL.run_job if LOCAL else run_job
        result = await asyncio.to_thread(run, RUNTIME, job_input, job_id, _progress_sender(job), cancel)
        return CONCURRENCY.settle_refresh(WARMUP.add_to_first_result(result), job_id)
    except asyncio.CancelledError:
        cancel.set()  # the job thread stops its downloads, or interrupts its own prompt and removes it
        raise
    finally:
        HEARTBEAT.task_finished(task_id)


if __name__ == "__main__":
    # Before the SDK's first job request: no billed job waits for ComfyUI's start or model loads.
    WARMUP = run_warmup(RUNTIME, SETTINGS.warmup_workflow)
    if not WARMUP.ok and SETTINGS.warmup_required:
        sys.exit(f"worker: the warm-up failed and WARMUP_REQUIRED is set: {WARMUP.error}")
    runpod.serverless.start({"handler": handler, **CONCURRENCY.start_config()})
