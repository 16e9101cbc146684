"""One job's three stages: prepare, execute (ComfyUI's one slot), deliver.

comfy.server.pipeline decides when a stage may run; this module is what each one does:

* prepare: plan delivery, fetch models, stage the inputs into ComfyUI's input folder, check
  the graph (when ComfyUI can list its nodes now);
* execute (holding the slot): make sure ComfyUI is up, queue the prompt and follow it, then
  take its outputs out of ComfyUI's folders and remove the rest of what it wrote;
* deliver: encode or upload the outputs.

One Deadline runs through all three. Time the job does not control is left out of it: a cold
boot of ComfyUI, fetching models into the shared cache, and waiting for the slot while another
job's prompt runs. Only the slot's holder acts on ComfyUI (`settle` after a timeout,
cancellation or silence; restarts), so a job that fails or is cancelled outside the slot never
touches another job's prompt.
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
from comfy.delivery.deliver import DeliveryPlan, plan_delivery
from comfy.delivery.holding import HeldOutputs
from comfy.delivery.local_copy import save_outputs
from comfy.delivery.outputs import OutputFile, collect_outputs
from comfy.errors import ComfyUnavailable, ComfyUnresponsive, JobCancelled, JobError, JobTimeout
from comfy.job.input import JobInput
from comfy.job.recovery import settle
from comfy.job.validation import validate_graph
from comfy.media.settings import MediaSettings
from comfy.media.staging import StagedInputs, check_input_targets, stage_inputs
from comfy.models.fetch import JobModels, fetch_job_models
from comfy.server.client import PROBE_TIMEOUT_S, ComfyClient
from comfy.server.monitor import PromptResult
from comfy.server.pipeline import JobPlace, Stage
from comfy.server.progress import ProgressReporter
from comfy.server.runtime import WorkerRuntime
from comfy.settings import FreeAfterJob

log = logging.getLogger("comfy.job.stages")

SETTLED = (JobTimeout, JobCancelled, ComfyUnresponsive)  # failures after which ComfyUI is brought back to idle


class JobRun:
    """One parsed job going through the three stages; `run()` returns its result dict or
    raises a JobError. Everything a stage takes (input files, model leases, the slot, held
    outputs, the scratch folder) is given back whatever happened."""

    def __init__(
        self, runtime: WorkerRuntime, job: JobInput, job_id: str, place: JobPlace,
        send_progress: Callable[[dict[str, Any]], None] | None, cancel: threading.Event, started: float,
        media: MediaSettings, discard_outputs: bool = False, save_dir: Path | None = None,
    ) -> None:
        self.runtime, self.settings, self.pipeline = runtime, runtime.settings, runtime.pipeline
        self.job, self.job_id, self.place = job, job_id, place
        self.send_progress, self.cancel, self.started, self.media = send_progress, cancel, started, media
        self.discard_outputs, self.save_dir = discard_outputs, save_dir
        self.deadline = Deadline(job.timeout_s or self.settings.job_timeout_s)
        self.client = runtime.client.bounded(self.deadline)
        self.graph = job.workflow
        self.unstaged_graph = dict(job.workflow)  # staging replaces nodes, never edits them: this keeps the originals
        self.delivery: DeliveryPlan | None = None
        self.models: JobModels | None = None
        self.staged: StagedInputs | None = None
        self.object_info: dict[str, Any] | None = None  # what the graph was checked against
        self.ready = False  # ComfyUI made ready by this job while it held the slot
        self.before: FolderSnapshot | None = None
        self.prompt_id: str | None = None  # the job's prompt, once it may be in ComfyUI's queue
        self.queued_wall_ms = 0.0
        self.finished: PromptResult | None = None
        self.fetch_started = 0.0
        self.files: list[OutputFile] = []
        self.held = HeldOutputs()
        self.prompt_files_removed = False
        self.replaced = False  # ComfyUI was killed (owned) or given up on (attached) during this job
        self.crashed = False  # ComfyUI died with this job's prompt (noted while the job held the slot)
        self.slot_wait_s = 0.0
        self.scratch = Path(tempfile.mkdtemp(prefix=f"comfy-job-{job_id[:40]}-"))

    # -- the stages ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            self._outside_execute(self.prepare)
            self.execute()
            result = self._outside_execute(self.deliver)
        finally:
            self._finish()
        return self._timed(result)

    def prepare(self) -> None:
        """Everything before the prompt that does not need ComfyUI's slot."""
        job, settings = self.job, self.settings
        if self.cancel.is_set():  # while it waited to be admitted (a cancelled job's thread still ending)
            raise JobCancelled("the job was cancelled before it started", details={"stage": Stage.PREPARE})
        # Storage settings and a job-chosen endpoint are checked before anything is fetched or run.
        if not self.discard_outputs:
            self.delivery = plan_delivery(job.output, self.media, job.task_id or self.job_id,
                                          settings.comfy_python, self.deadline)
        # Models first: a cold start's downloads overlap ComfyUI's boot. Held (never evicted) until the
        # prompt ends. Provisioning, like the cold boot, is not the job's time.
        models_started = time.monotonic()
        self.models = fetch_job_models(job.models, job.workflow, settings.model_cache_root, self.media, self.cancel,
                                       self.send_progress, settings.progress_interval_s)
        self.deadline.extend(time.monotonic() - models_started)
        if self.place.holds_slot:
            self._ensure_ready()
            info: dict[str, Any] | None = _object_info_for(self.client, self.graph)
        else:
            info = self._object_info_now()
        self.staged = stage_inputs(job.images, job.inputs, self.graph, settings, self.client, self.media, self.cancel,
                                   object_info=info, deadline=self.deadline, check_targets=info is not None)
        if info is not None:
            validate_graph(self.graph, info, self.runtime.explain_unknown_class)
            self.object_info = info

    def execute(self) -> None:
        """Take ComfyUI's slot (after the jobs that arrived earlier), run the prompt, take its outputs."""
        if not self.place.holds_slot:
            self.slot_wait_s = self.pipeline.take_slot(self.place, self.cancel)
            self.deadline.extend(self.slot_wait_s)  # another job's prompt running is not this job's time
            log.info("job %s: prepared in %.2f s, waited %.2f s for ComfyUI", self.job_id,
                     time.monotonic() - self.started - self.slot_wait_s, self.slot_wait_s)
        try:
            self._run_prompt()
        except SETTLED as exc:
            error, self.replaced = settle(
                self.runtime, self.prompt_id if self.finished is None else None, exc,
                self.runtime.monitor.current_node, self.graph, self._remove_abandoned,
            )
            self._note(error)
            raise error from None
        except JobError as exc:
            self._note(exc)
            raise
        finally:
            self._after_prompt()

    def deliver(self) -> dict[str, Any]:
        """Hand the outputs back (inline or uploaded); their files are the job's own by now."""
        if self.delivery is None:
            return {}
        files = save_outputs(self.files, self.save_dir) if self.save_dir is not None else self.files
        return self.delivery.deliver(files)

    # -- inside the slot -------------------------------------------------------------------

    def _run_prompt(self) -> None:
        runtime, settings, graph = self.runtime, self.settings, self.graph
        if not self.ready:
            self._ensure_ready()
        if self.object_info is None or self.client.cached_object_info() is not self.object_info:
            # Not checked in prepare (ComfyUI was booting), or ComfyUI restarted since: check now.
            info = _object_info_for(self.client, graph)
            if self.job.inputs:
                check_input_targets(self.job.inputs, self.unstaged_graph, info)
            validate_graph(graph, info, runtime.explain_unknown_class)
            self.object_info = info
        # Output files are removed after delivery; this keeps a repeated identical job from
        # being answered from ComfyUI's cache with those removed files (comfy/delivery/cleanup.py).
        mark_output_nodes(graph, self.object_info, uuid.uuid4().hex)
        extra_data = {"api_key_comfy_org": self.job.comfy_org_api_key} if self.job.comfy_org_api_key else None
        runtime.events.discard_pending()
        self.before = FolderSnapshot.take(settings)
        self.queued_wall_ms = time.time() * 1000
        # The id is chosen here, so a prompt whose POST got no answer can still be stopped.
        self.prompt_id = uuid.uuid4().hex
        runtime.monitor.current_node = None  # not a previous job's, should the POST itself time out
        self.prompt_id = self.client.queue_prompt(graph, runtime.events.client_id, extra_data, prompt_id=self.prompt_id)
        log.info("job %s: queued prompt %s", self.job_id, self.prompt_id)
        reporter = ProgressReporter(graph, self.send_progress, settings.progress_interval_s) if self.send_progress else None
        self.finished = runtime.monitor.wait(self.prompt_id, self.deadline, self.cancel, reporter)
        self.fetch_started = time.monotonic()
        if self.delivery is not None:
            files = collect_outputs(self.finished.history, graph, settings, self.client, self.scratch, self.job.include_temp)
            self.held, self.files = HeldOutputs.take(files, self.before, settings)
        self._remove_prompt_files()  # what delivery does not take: previews not asked for, new empty folders

    def _after_prompt(self) -> None:
        """The prompt is over: its inputs and model leases go, and so does whatever it left in
        ComfyUI's folders; in a pipeline the slot goes to the next job."""
        if self.staged is not None:
            self.staged.cleanup()
        if self.models is not None:
            self.models.release()
        if not self.prompt_files_removed:
            self._remove_prompt_files()
        if self.pipeline.pipelined:
            leave_slot(self.runtime, self.place)

    def _ensure_ready(self) -> None:
        self.deadline.extend(self.runtime.ensure_ready(self.deadline))  # ComfyUI's cold boot is not the job's time
        self.ready = True

    def _remove_prompt_files(self) -> None:
        if self.prompt_id is None or self.before is None or (self.replaced and self.runtime.process is None):
            return  # (an attached ComfyUI given up on: the reaper removes the files once it answers)
        self.prompt_files_removed = True
        _remove_prompt_files(self.runtime, self.prompt_id, self.finished.history if self.finished else None,
                             self.before, self.replaced)

    def _note(self, error: JobError) -> None:
        """Whether ComfyUI died with the job: asked while the job holds the slot, before anyone restarts it."""
        self.crashed = isinstance(error, ComfyUnavailable) and not self.runtime.comfy_alive()

    # -- outside the slot ------------------------------------------------------------------

    def _outside_execute(self, stage: Callable[[], Any]) -> Any:
        """Run prepare or deliver. A job holding the slot throughout (JOB_CONCURRENCY=1) brings
        ComfyUI back to idle after their failures too; a pipelined one leaves ComfyUI alone."""
        try:
            return stage()
        except JobError as exc:
            if not self.place.holds_slot:
                raise
            if isinstance(exc, SETTLED):
                error, _ = settle(self.runtime, None, exc, self.runtime.monitor.current_node, self.graph,
                                  self._remove_abandoned)
                self._note(error)
                raise error from None
            self._note(exc)
            raise

    def _object_info_now(self) -> dict[str, Any] | None:
        """ComfyUI's node classes if it can list them now, without waiting for a boot and without
        judging a silence (only the slot's holder restarts ComfyUI); None: execute checks the graph."""
        if not self.runtime.comfy_ready():
            return None
        try:
            return _object_info_for(self.client, self.graph)
        except ComfyUnavailable as exc:  # (ComfyUnresponsive too)
            log.info("job %s: ComfyUI cannot list its nodes now (%s); the graph is checked before it runs",
                     self.job_id, exc.message)
            return None

    def _remove_abandoned(self, history: dict[str, Any] | None) -> None:
        """For the reaper of an attached ComfyUI: the files of a prompt it stopped late."""
        if self.before is None:
            return
        try:
            remove_prompt_files(history, self.settings, self.before)
        except Exception as exc:  # noqa: BLE001 - a background clean-up: log, never raise
            log.warning("could not remove the files of an abandoned prompt: %s", exc)

    def _finish(self) -> None:
        if self.staged is not None:
            self.staged.cleanup()
        if self.models is not None:
            self.models.release()
        self.held.release()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _timed(self, result: dict[str, Any]) -> dict[str, Any]:
        done, finished = time.monotonic(), self.finished
        assert finished is not None
        result["prompt_id"] = self.prompt_id
        result["timings"] = {
            "queue_ms": round(finished.execution_start_ms - self.queued_wall_ms, 1) if finished.execution_start_ms else None,
            "execution_ms": (
                round(finished.execution_end_ms - finished.execution_start_ms, 1)
                if finished.execution_start_ms and finished.execution_end_ms else None
            ),
            "fetch_ms": round((done - self.fetch_started) * 1000, 1),
            "total_ms": round((done - self.started) * 1000, 1),
        }
        if self.pipeline.pipelined:
            result["timings"]["slot_wait_ms"] = round(self.slot_wait_s * 1000, 1)
        if self.models is not None and self.models.outcomes:
            result["timings"]["model_fetch_ms"] = self.models.fetch_ms
            result["models"] = self.models.summary()
        return result


def leave_slot(runtime: WorkerRuntime, place: JobPlace) -> None:
    """Hand ComfyUI's slot on; `/free` first when COMFY_FREE_AFTER_JOB asks (the holder's last word)."""
    _free_memory(runtime)
    runtime.pipeline.leave_slot(place)


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
            # ComfyUI ran nothing but this prompt since (the slot was this job's), so whatever
            # appeared since it was queued is its.
            remove_new_entries(before)
            return
        if history is None:  # failed, timed out or cancelled: ComfyUI still lists what was written
            history = runtime.client.history(prompt_id, timeout_s=PROBE_TIMEOUT_S, within_deadline=False)
        remove_prompt_files(history, runtime.settings, before)
    except Exception as exc:  # noqa: BLE001 - cleanup must never change the job's result
        log.warning("could not remove the files of prompt %s: %s", prompt_id, exc)


def _free_memory(runtime: WorkerRuntime) -> None:
    mode = runtime.settings.free_after_job
    if mode is FreeAfterJob.NONE or not runtime.comfy_alive():
        return
    try:
        runtime.client.free(unload_models=mode is FreeAfterJob.MODELS, free_memory=True)
    except ComfyUnavailable as exc:
        log.warning("POST /free failed: %s", exc)
