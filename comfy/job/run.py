"""Run one job: inputs in, workflow checked and run, outputs back.

Blocking; the async handler runs it in a thread and signals cancellation through an
Event. Every failure comes back as a result dict with `error` (never an exception), so
the caller always gets a clear reason and the worker keeps going.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from comfy.delivery.deliver import plan_delivery
from comfy.delivery.local_copy import save_outputs
from comfy.errors import ComfyUnavailable, JobError, JobTimeout
from comfy.media.staging import stage_inputs
from comfy.job.input import JobInput, parse_job_input
from comfy.job.result import JobResult
from comfy.media.settings import MediaSettings
from comfy.models.fetch import JobModels, fetch_job_models
from comfy.server.monitor import Cancelled, DeadlineExceeded
from comfy.delivery.cleanup import mark_output_nodes, remove_prompt_files
from comfy.delivery.outputs import collect_outputs
from comfy.server.progress import ProgressReporter
from comfy.server.runtime import WorkerRuntime
from comfy.settings import FreeAfterJob
from comfy.job.validation import validate_graph

log = logging.getLogger("comfy.job.run")

INTERRUPT_SETTLE_S = 5.0  # how long to wait for ComfyUI to stop after /interrupt


class JobCancelled(JobError):
    error_type = "cancelled"


def run_job(
    runtime: WorkerRuntime,
    raw_input: Any,
    job_id: str,
    send_progress: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
    discard_outputs: bool = False,
    save_dir: Path | None = None,
) -> JobResult:
    """Run one job and return the RunPod result (`error` set on failure).

    discard_outputs (the warm-up): run the workflow, deliver nothing; its files are removed.
    `save_dir` (local runs): every output is also written there, and its entry says where.
    """
    started = time.monotonic()
    cancel = cancel or threading.Event()
    crashed = False
    with runtime.job_lock:
        try:
            job = parse_job_input(raw_input, max_images=runtime.settings.max_images)
            result = _run(runtime, job, job_id, send_progress, cancel, started, discard_outputs, save_dir)
        except JobError as exc:
            log.warning("job %s failed: %s", job_id, exc.message)
            result = exc.to_result()
            crashed = isinstance(exc, ComfyUnavailable) and not runtime.comfy_alive()
        except Exception as exc:  # a bug of ours: still a clear failure, never a dead worker
            log.exception("job %s failed unexpectedly", job_id)
            result = {"error": f"internal worker error: {type(exc).__name__}: {exc}", "error_type": "internal"}
        _free_memory(runtime)
    if runtime.settings.refresh_worker or (crashed and runtime.settings.refresh_after_crash):
        result["refresh_worker"] = True
    return JobResult(result)


def _run(
    runtime: WorkerRuntime,
    job: JobInput,
    job_id: str,
    send_progress: Callable[[dict[str, Any]], None] | None,
    cancel: threading.Event,
    started: float,
    discard_outputs: bool = False,
    save_dir: Path | None = None,
) -> dict[str, Any]:
    settings, client = runtime.settings, runtime.client
    media = MediaSettings.from_env()  # per job: cheap, and an operator's change applies at once
    # Storage settings and a job-chosen endpoint are checked before anything is fetched or run.
    delivery = None if discard_outputs else plan_delivery(job.output, media, job.task_id or job_id, settings.comfy_python)
    # Models first: a cold start's downloads overlap ComfyUI's boot. Held (never evicted) until the job ends.
    models = fetch_job_models(job.models, job.workflow, settings.model_cache_root, media, cancel, send_progress,
                              settings.progress_interval_s)
    try:
        runtime.ensure_ready()  # a cold start waits for ComfyUI here, outside the job's deadline
        staged = stage_inputs(job.images, job.inputs, job.workflow, settings, client, media, cancel)
    except BaseException:
        models.release()
        raise
    scratch = Path(tempfile.mkdtemp(prefix=f"comfy-job-{job_id[:40]}-"))
    prompt_id: str | None = None
    history: dict[str, Any] | None = None
    try:
        graph = job.workflow
        validate_graph(graph, client.object_info(), runtime.explain_unknown_class)
        # Output files are removed after delivery; this keeps a repeated identical job from
        # being answered from ComfyUI's cache with those removed files (comfy/delivery/cleanup.py).
        mark_output_nodes(graph, client.object_info(), uuid.uuid4().hex)
        extra_data = {"api_key_comfy_org": job.comfy_org_api_key} if job.comfy_org_api_key else None
        runtime.events.discard_pending()
        deadline = time.monotonic() + (job.timeout_s or settings.job_timeout_s)
        queued_wall_ms = time.time() * 1000
        prompt_id = client.queue_prompt(graph, runtime.events.client_id, extra_data)
        log.info("job %s: queued prompt %s", job_id, prompt_id)
        reporter = ProgressReporter(graph, send_progress, settings.progress_interval_s) if send_progress else None
        try:
            finished = runtime.monitor.wait(prompt_id, deadline, cancel, reporter)
        except DeadlineExceeded:
            _stop_prompt(runtime, prompt_id)
            limit = job.timeout_s or settings.job_timeout_s
            raise JobTimeout(
                f"the workflow did not finish within {limit:g} s; ComfyUI was interrupted "
                "(raise timeout_s in the job input or COMFY_JOB_TIMEOUT_S)",
                details={"prompt_id": prompt_id, "timeout_s": limit},
            ) from None
        except Cancelled:
            _stop_prompt(runtime, prompt_id)
            raise JobCancelled("the job was cancelled; ComfyUI was interrupted", details={"prompt_id": prompt_id}) from None
        history = finished.history
        fetch_started = time.monotonic()
        if delivery is None:
            result: dict[str, Any] = {}
        else:
            files = collect_outputs(finished.history, graph, settings, client, scratch, job.include_temp)
            if save_dir is not None:
                files = save_outputs(files, save_dir)
            result = delivery.deliver(files)  # the files are removed below, with the rest of the prompt's
        done = time.monotonic()
        result["prompt_id"] = prompt_id
        result["timings"] = {
            "queue_ms": round(finished.execution_start_ms - queued_wall_ms, 1) if finished.execution_start_ms else None,
            "execution_ms": (
                round(finished.execution_end_ms - finished.execution_start_ms, 1)
                if finished.execution_start_ms and finished.execution_end_ms else None
            ),
            "fetch_ms": round((done - fetch_started) * 1000, 1),
            "total_ms": round((done - started) * 1000, 1),
        }
        _add_models(result, models)
        return result
    finally:
        staged.cleanup()
        models.release()
        shutil.rmtree(scratch, ignore_errors=True)
        if prompt_id is not None:
            _remove_prompt_files(runtime, prompt_id, history)


def _add_models(result: dict[str, Any], models: JobModels) -> None:
    """The job's fetched models and their fetch time, when it listed any."""
    if models.outcomes:
        result["timings"]["model_fetch_ms"] = models.fetch_ms
        result["models"] = models.summary()


def _remove_prompt_files(runtime: WorkerRuntime, prompt_id: str, history: dict[str, Any] | None) -> None:
    """Remove what the prompt wrote (temp previews; files of a failed run), best effort."""
    try:
        if history is None:  # failed, timed out or cancelled: ComfyUI still lists what was written
            history = runtime.client.history(prompt_id)
        remove_prompt_files(history, runtime.settings)
    except Exception as exc:  # noqa: BLE001 - cleanup must never change the job's result
        log.warning("could not remove the files of prompt %s: %s", prompt_id, exc)


def _stop_prompt(runtime: WorkerRuntime, prompt_id: str) -> None:
    """Interrupt a running prompt, drop it from the queue, and wait until ComfyUI is idle."""
    client = runtime.client
    try:
        client.delete_from_queue([prompt_id])
        client.interrupt(prompt_id)
        settle = time.monotonic() + INTERRUPT_SETTLE_S
        while time.monotonic() < settle and runtime.comfy_alive():
            queue = client.queue()
            if not queue.get("queue_running") and not any(
                item[1] == prompt_id for item in queue.get("queue_pending", [])
            ):
                return
            time.sleep(0.05)
        log.warning("prompt %s still running %.0f s after /interrupt", prompt_id, INTERRUPT_SETTLE_S)
    except ComfyUnavailable as exc:
        log.warning("could not interrupt prompt %s: %s", prompt_id, exc)


def _free_memory(runtime: WorkerRuntime) -> None:
    mode = runtime.settings.free_after_job
    if mode is FreeAfterJob.NONE or not runtime.comfy_alive():
        return
    try:
        runtime.client.free(unload_models=mode is FreeAfterJob.MODELS, free_memory=True)
    except ComfyUnavailable as exc:
        log.warning("POST /free failed: %s", exc)
