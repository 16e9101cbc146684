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

from comfy.deadline import Deadline
from comfy.delivery.cleanup import FolderSnapshot, mark_output_nodes, remove_new_entries, remove_prompt_files
from comfy.delivery.deliver import plan_delivery
from comfy.delivery.local_copy import save_outputs
from comfy.delivery.outputs import collect_outputs
from comfy.errors import ComfyUnavailable, ComfyUnresponsive, JobCancelled, JobError, JobTimeout
from comfy.job.input import JobInput, parse_job_input
from comfy.job.result import JobResult
from comfy.job.recovery import settle
from comfy.job.validation import validate_graph
from comfy.media.settings import MediaSettings
from comfy.media.staging import stage_inputs
from comfy.models.fetch import JobModels, fetch_job_models
from comfy.server.client import PROBE_TIMEOUT_S, ComfyClient
from comfy.server.progress import ProgressReporter
from comfy.server.runtime import WorkerRuntime
from comfy.settings import FreeAfterJob, WorkerSettings

log = logging.getLogger("comfy.job.run")


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
    refresh: str | None = None
    with runtime.job_lock:
        try:
            media = MediaSettings.from_env()  # per job: cheap, and an operator's change applies at once
            job = parse_job_input(raw_input, max_images=runtime.settings.max_images,
                                  max_input_bytes=media.max_input_bytes)
            result = _run(runtime, job, job_id, send_progress, cancel, started, media, discard_outputs, save_dir)
        except JobError as exc:
            log.warning("job %s failed: %s", job_id, exc.message)
            result = exc.to_result()
            crashed = isinstance(exc, ComfyUnavailable) and not runtime.comfy_alive()
            refresh = exc.refresh_worker
        except Exception as exc:  # a bug of ours: still a clear failure, never a dead worker
            log.exception("job %s failed unexpectedly", job_id)
            result = {"error": f"internal worker error: {type(exc).__name__}: {exc}", "error_type": "internal"}
        _free_memory(runtime)
    settings = runtime.settings
    if settings.refresh_worker or refresh == "always" or (
        (crashed or refresh == "after_crash") and settings.refresh_after_crash
    ):
        result["refresh_worker"] = True
    return JobResult(result)


def _run(
    runtime: WorkerRuntime,
    job: JobInput,
    job_id: str,
    send_progress: Callable[[dict[str, Any]], None] | None,
    cancel: threading.Event,
    started: float,
    media: MediaSettings,
    discard_outputs: bool = False,
    save_dir: Path | None = None,
) -> dict[str, Any]:
    settings, client = runtime.settings, runtime.client
    deadline = Deadline(job.timeout_s or settings.job_timeout_s)
    graph = job.workflow
    prompt_id: str | None = None  # the job's prompt, once it may be in ComfyUI's queue
    finished = None
    before: FolderSnapshot | None = None
    replaced = False  # ComfyUI was killed (owned) or given up on (attached) during this job
    staged = None
    models: JobModels | None = None
    scratch = Path(tempfile.mkdtemp(prefix=f"comfy-job-{job_id[:40]}-"))
    with client.bounded_by(deadline):
        try:
            # Storage settings and a job-chosen endpoint are checked before anything is fetched or run.
            delivery = None if discard_outputs else plan_delivery(job.output, media, job.task_id or job_id,
                                                                  settings.comfy_python, deadline)
            # Models first: a cold start's downloads overlap ComfyUI's boot. Held (never evicted) until the
            # job ends. Provisioning, like the cold boot, is not the job's time.
            models_started = time.monotonic()
            models = fetch_job_models(job.models, job.workflow, settings.model_cache_root, media, cancel,
                                      send_progress, settings.progress_interval_s)
            deadline.extend(time.monotonic() - models_started)
            deadline.extend(runtime.ensure_ready(deadline))  # ComfyUI's cold boot is not the job's time
            object_info = _object_info_for(client, graph)
            staged = stage_inputs(job.images, job.inputs, graph, settings, client, media, cancel,
                                  object_info=object_info, deadline=deadline)
            validate_graph(graph, object_info, runtime.explain_unknown_class)
            # Output files are removed after delivery; this keeps a repeated identical job from
            # being answered from ComfyUI's cache with those removed files (comfy/delivery/cleanup.py).
            mark_output_nodes(graph, object_info, uuid.uuid4().hex)
            extra_data = {"api_key_comfy_org": job.comfy_org_api_key} if job.comfy_org_api_key else None
            runtime.events.discard_pending()
            before = FolderSnapshot.take(settings)
            queued_wall_ms = time.time() * 1000
            # The id is chosen here, so a prompt whose POST got no answer can still be stopped.
            prompt_id = uuid.uuid4().hex
            runtime.monitor.current_node = None  # not a previous job's, should the POST itself time out
            prompt_id = client.queue_prompt(graph, runtime.events.client_id, extra_data, prompt_id=prompt_id)
            log.info("job %s: queued prompt %s", job_id, prompt_id)
            reporter = ProgressReporter(graph, send_progress, settings.progress_interval_s) if send_progress else None
            finished = runtime.monitor.wait(prompt_id, deadline, cancel, reporter)
            fetch_started = time.monotonic()
            if delivery is None:
                result: dict[str, Any] = {}
            else:
                files = collect_outputs(finished.history, graph, settings, client, scratch, job.include_temp)
                if save_dir is not None:
                    files = save_outputs(files, save_dir)
                result = delivery.deliver(files)  # the files are removed below, with the rest of the prompt's
        except (JobTimeout, JobCancelled, ComfyUnresponsive) as exc:
            error, replaced = settle(
                runtime, prompt_id if finished is None else None, exc, runtime.monitor.current_node, graph,
                lambda history: _remove_abandoned(history, settings, before),
            )
            raise error from None
        finally:
            if staged is not None:
                staged.cleanup()
            if models is not None:
                models.release()
            shutil.rmtree(scratch, ignore_errors=True)
            if prompt_id is not None and before is not None and not (replaced and runtime.process is None):
                # (an attached ComfyUI given up on: the reaper removes the files once it answers)
                _remove_prompt_files(runtime, prompt_id, finished.history if finished else None, before, replaced)
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


def _add_models(result: dict[str, Any], models: JobModels | None) -> None:
    """The job's fetched models and their fetch time, when it listed any."""
    if models is not None and models.outcomes:
        result["timings"]["model_fetch_ms"] = models.fetch_ms
        result["models"] = models.summary()


def _object_info_for(client: ComfyClient, graph: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's node classes, fetched again when the graph names one the cached copy lacks:
    an attached ComfyUI may have been restarted with new custom nodes since it was cached."""
    info = client.object_info()
    if any(node.get("class_type") not in info for node in graph.values()):
        info = client.object_info(refresh=True)
    return info


def _remove_prompt_files(runtime: WorkerRuntime, prompt_id: str, history: dict[str, Any] | None,
                         before: FolderSnapshot, killed: bool) -> None:
    """Remove what the prompt wrote (temp previews; files of a failed run), best effort."""
    try:
        if killed or (runtime.process is not None and not runtime.process.is_alive()):
            # ComfyUI died or was killed with the prompt: its history is gone, and an owned
            # ComfyUI ran nothing but this prompt, so whatever appeared since it was queued is its.
            remove_new_entries(before)
            return
        if history is None:  # failed, timed out or cancelled: ComfyUI still lists what was written
            history = runtime.client.history(prompt_id, timeout_s=PROBE_TIMEOUT_S, within_deadline=False)
        remove_prompt_files(history, runtime.settings, before)
    except Exception as exc:  # noqa: BLE001 - cleanup must never change the job's result
        log.warning("could not remove the files of prompt %s: %s", prompt_id, exc)


def _remove_abandoned(history: dict[str, Any] | None, settings: WorkerSettings, before: FolderSnapshot | None) -> None:
    """For the reaper of an attached ComfyUI: the files of a prompt it stopped late."""
    if before is None:
        return
    try:
        remove_prompt_files(history, settings, before)
    except Exception as exc:  # noqa: BLE001 - a background clean-up: log, never raise
        log.warning("could not remove the files of an abandoned prompt: %s", exc)


def _free_memory(runtime: WorkerRuntime) -> None:
    mode = runtime.settings.free_after_job
    if mode is FreeAfterJob.NONE or not runtime.comfy_alive():
        return
    try:
        runtime.client.free(unload_models=mode is FreeAfterJob.MODELS, free_memory=True)
    except ComfyUnavailable as exc:
        log.warning("POST /free failed: %s", exc)
