"""Between a task row and a RunPod job: the job input built from params (a raw workflow,
or a template rendered with its arguments; outputs of dependencies resolved to URLs), and
the task's outcome read from RunPod's job status."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence
from uuid import UUID

from supabase_sync.config import Route
from supabase_sync.output_refs import find_refs, referenced_tasks, resolve_refs
from supabase_sync.runpod_api import JobStatus
from supabase_sync.store import ClaimedTask, DependencyOutput, TaskStore
from supabase_sync.templates import Found, TemplateCatalog, TemplateError, render

log = logging.getLogger("supabase_sync.jobs")

MAX_RUN_BODY_BYTES = 10 * 1024 * 1024  # RunPod's /run limit
# Worker errors that another attempt cannot fix: the same input fails the same way on any
# worker (error_type values of comfy/errors.py, comfy/media/, comfy/models/cache.py). The
# others (a download that failed, ComfyUI down, a full or busy model cache, a timeout, an
# execution error) may pass on another try or another worker, and are retried.
PERMANENT_ERROR_TYPES = frozenset({
    "invalid_input", "invalid_workflow", "prompt_rejected",
    "input_too_large",        # over the worker's MAX_INPUT_BYTES
    "input_url_refused",      # not http(s), or a private, loopback or metadata address
    "model_url_refused",      # the same, for a model URL
    "model_sha256_mismatch",  # the file at the URL is not the one the job names
    "output_too_large",       # the same workflow makes the same outputs, over RESULT_MAX_BYTES
    "superseded",             # the fence refused it (read apart, below: never written back)
})
# The worker's start fence refused the job (start_task): it belongs to an older claim and
# ran nothing; its result must never be written back.
SUPERSEDED_ERROR_TYPE = "superseded"
# Inline file payloads larger than this are not copied into tasks.result (use uploads).
MAX_INLINE_RESULT_BYTES = 64 * 1024
MAX_PROBLEMS_TEXT = 4000  # error_message: every problem, up to this many characters


class InvalidTaskParams(ValueError):
    """The task's params cannot become a job; the message says what is wrong. Not retried."""

    @classmethod
    def listing(cls, problems: Sequence[str]) -> "InvalidTaskParams":
        """One error naming every problem (the count first, so a cut message still says how many)."""
        if len(problems) == 1:
            return cls(problems[0])
        text = f"{len(problems)} problems: " + "; ".join(problems)
        if len(text) > MAX_PROBLEMS_TEXT:
            text = text[: MAX_PROBLEMS_TEXT - 20].rsplit("; ", 1)[0] + "; ... (cut)"
        return cls(text)


@dataclass
class Lookups:
    """What a batch of tasks needs from outside their params: templates and dependency outputs."""

    templates: dict[str, Found | TemplateError] = field(default_factory=dict)
    outputs: dict[UUID, dict[UUID, DependencyOutput]] = field(default_factory=dict)  # task -> dependency -> row


@dataclass(frozen=True)
class BuiltJob:
    """A task's RunPod job input, and the template version rendered for it (if any)."""

    input: dict[str, Any]
    template: str | None = None


def _params_object(task_id: UUID, params: Any) -> dict[str, Any]:
    if isinstance(params, str):
        # params stored as a JSON string (double-encoded by some clients): accept it if it parses
        try:
            params = json.loads(params)
        except json.JSONDecodeError as exc:
            raise InvalidTaskParams(f"params is a string that is not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise InvalidTaskParams(f"params must be a JSON object, not {type(params).__name__}")
    return params


def build_job_input(task_id: UUID, task_type: str, params: Any, route: Route,
                    lookups: Lookups | None = None, lease_token: UUID | None = None) -> dict[str, Any]:
    """The `input` of the RunPod job for a task; raises InvalidTaskParams when it cannot be built."""
    return build_job(task_id, task_type, params, route, lookups or Lookups(), lease_token).input


def build_job(task_id: UUID, task_type: str, params: Any, route: Route, lookups: Lookups,
              lease_token: UUID | None = None) -> BuiltJob:
    """The RunPod job for a task; InvalidTaskParams lists every problem at once.

    Every route: `{"from_task", "output"}` references anywhere in params become the URL of
    that output (lookups.outputs, read from the database for this batch).
    comfy routes: a raw workflow (the seed's params: workflow, video_url, video_node_id,
    video_input_field, and the worker's images, inputs, output, timeout_s...) or a
    template (`template` + `args`, rendered here: the worker gets a plain workflow and
    `inputs`), plus `task_id`, and the route's output delivery (bucket, prefix/<task_id>)
    unless the task names its own.
    passthrough routes: params as they are, plus task_id and task_type.
    Both carry the claim's `lease_token`: a worker with Supabase credentials passes
    task_id, lease_token and its job id to start_task() before it runs anything.
    """
    job = dict(_params_object(task_id, params))
    problems: list[str] = []
    if any(True for _ in find_refs(job)):
        job, problems = resolve_refs(job, lookups.outputs.get(task_id, {}))
    template = None
    if route.kind == "comfy":
        if "template" in job:
            template = _render_template(job, lookups, problems)
        elif "args" in job:
            problems.append("params has `args` but no `template` to apply them to")
        else:
            _check_workflow(job, problems)
        if route.output is not None:
            delivery = route.output.model_dump(exclude_none=True)
            delivery["prefix"] = f"{route.output.prefix.rstrip('/')}/{task_id}"
            given = job.get("output")
            job["output"] = {**delivery, **given} if isinstance(given, dict) else delivery
    else:
        job["task_type"] = task_type
    if problems:
        raise InvalidTaskParams.listing(problems)
    job["task_id"] = str(task_id)
    if lease_token is not None:
        job["lease_token"] = str(lease_token)
    size = len(json.dumps({"input": job}).encode())
    if size > MAX_RUN_BODY_BYTES:
        raise InvalidTaskParams(
            f"the job input is {size} bytes, over RunPod's 10 MB /run limit: pass large files as URLs"
        )
    return BuiltJob(job, template)


def _check_workflow(job: dict[str, Any], problems: list[str]) -> None:
    if "workflow" not in job:
        problems.append("params has no 'workflow' (a ComfyUI graph in API format) and no 'template'")
        return
    workflow = job["workflow"]
    if isinstance(workflow, str):
        try:
            workflow = json.loads(workflow)
        except json.JSONDecodeError as exc:
            problems.append(f"params.workflow is a string that is not valid JSON ({exc})")
            return
    if not isinstance(workflow, dict) or not workflow:
        problems.append("params.workflow must be a non-empty JSON object (API format: {node_id: {class_type, inputs}})")
        return
    job["workflow"] = workflow


def _render_template(job: dict[str, Any], lookups: Lookups, problems: list[str]) -> str | None:
    """Replace `template` + `args` in job by the rendered workflow and inputs; the name@version used."""
    ref, args = job.pop("template"), job.pop("args", {})
    if "workflow" in job:
        problems.append("params has both `workflow` and `template`: give one")
    found = lookups.templates.get(ref) if isinstance(ref, str) else None
    if found is None:
        found = TemplateError("params.template", [f"must be a template name or name@version, not {ref!r}"])
    try:
        if isinstance(found, TemplateError):
            raise found
        rendered = render(found.usable(), args)
    except TemplateError as exc:
        # the subject once, before its first problem: "template x@1: args.a: ...; args.b: ..."
        problems.extend(f"{exc.subject}: {p}" if i == 0 else p for i, p in enumerate(exc.problems))
        return None
    given = job.get("inputs", [])
    if not isinstance(given, list):
        problems.append("params.inputs must be a list")
        return None
    taken = {(str(i.get("node")), i.get("field")) for i in given if isinstance(i, dict)}
    for item in rendered.inputs:
        if (item["node"], item["field"]) in taken:
            problems.append(f"params.inputs sets node {item['node']} field {item['field']!r}, "
                            f"which the template's media parameter sets")
    job["workflow"] = rendered.workflow
    if rendered.inputs or given:
        job["inputs"] = [*given, *rendered.inputs]
    return rendered.template


class JobBuilder:
    """Builds a claimed batch's job inputs with at most three RPCs for the whole batch:
    the templates it names that are not in folders or memory, the outputs of the
    dependencies it references, and (before /run) the template versions rendered."""

    def __init__(self, store: TaskStore, catalog: TemplateCatalog) -> None:
        self.store = store
        self.catalog = catalog

    async def build(self, route: Route, tasks: Sequence[ClaimedTask]) -> list[BuiltJob | InvalidTaskParams]:
        """One result per task, in order. Raises only when the lookups fail (the database, the
        network): then nothing was decided and the caller should give the tasks back. A task
        whose params break the building in any other way fails alone: one bad row must not
        hold up its batch for ever."""
        params = {task.task_id: _params_or_none(task) for task in tasks}
        lookups = Lookups()
        if route.kind == "comfy":
            names = {p["template"] for p in params.values() if p is not None and isinstance(p.get("template"), str)}
            if names:
                lookups.templates = await self.catalog.resolve(names)
        pairs = sorted({(task.task_id, dependency) for task in tasks if params[task.task_id] is not None
                        for dependency in _referenced(params[task.task_id])})
        if pairs:
            for row in await self.store.dependency_outputs(pairs):
                lookups.outputs.setdefault(row.task_id, {})[row.from_task] = row
        built: list[BuiltJob | InvalidTaskParams] = []
        for task in tasks:
            try:
                built.append(build_job(task.task_id, task.task_type, task.params, route, lookups, task.lease_token))
            except InvalidTaskParams as exc:
                built.append(exc)
            except RecursionError:
                built.append(InvalidTaskParams("params are nested too deeply to be read"))
            except Exception as exc:  # a defect here must fail one task, not stall the queue
                log.exception("task %s: building its job input failed", task.task_id)
                built.append(InvalidTaskParams(f"the job input could not be built ({type(exc).__name__}: {exc})"))
        rendered = [(task.task_id, task.lease_token, job.template)
                    for task, job in zip(tasks, built) if isinstance(job, BuiltJob) and job.template]
        if rendered:
            await self.store.record_resolved_templates(rendered)
        return built


def _params_or_none(task: ClaimedTask) -> dict[str, Any] | None:
    try:
        return _params_object(task.task_id, task.params)
    except InvalidTaskParams:
        return None  # reported when the job is built


def _referenced(params: dict[str, Any]) -> set[UUID]:
    try:
        return referenced_tasks(params)
    except RecursionError:
        return set()  # reported when the job is built


@dataclass(frozen=True)
class JobOutcome:
    """What a finished RunPod job means for its task."""

    kind: str  # "complete" | "fail" | "running" | "superseded"
    output_url: str | None = None
    result: Any = None
    error: str | None = None
    retryable: bool = True
    progress: Any = None


def primary_output_url(output: Any) -> str | None:
    """The first file output's URL (outputs[].url), else a worker-comfyui s3_url image."""
    if not isinstance(output, dict):
        return None
    for item in output.get("outputs") or []:
        if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"]:
            return item["url"]
    for item in output.get("images") or []:
        if isinstance(item, dict) and item.get("type") == "s3_url" and isinstance(item.get("data"), str):
            return item["data"]
    return None


def _slim(value: Any) -> Any:
    """The result without large inline payloads: base64 files belong in storage, not a row."""
    if isinstance(value, dict):
        slim = {}
        for key, item in value.items():
            if key == "data" and isinstance(item, str) and len(item) > MAX_INLINE_RESULT_BYTES:
                slim["data_omitted_bytes"] = len(item)
            else:
                slim[key] = _slim(item)
        return slim
    if isinstance(value, list):
        return [_slim(item) for item in value]
    return value


def _error_fields(status: JobStatus) -> tuple[str, str | None, Any]:
    """The failure's sentence, error_type and details, wherever the worker put them.

    A returned {"error", "error_type", "details"} arrives as `error` plus `output`; a raising
    handler's error is a JSON string (`error_type`, `error_message`); some workers return
    {"error": "<JSON of the same>"}; all three carry the type that decides on a retry.
    """
    output = status.output if isinstance(status.output, dict) else {}
    error_type, details = output.get("error_type"), output.get("details")
    error: Any = status.error
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            error = parsed
    if isinstance(error, dict):
        error_type = error_type or error.get("error_type")
        details = details if details is not None else error.get("details")
        message = error.get("error_message") or error.get("error") or error.get("message")
        text = str(message) if message else json.dumps(error)[:2000]
    elif isinstance(error, str):
        text = error
    elif error is not None:
        text = json.dumps(error)[:2000]
    else:
        text = f"RunPod job {status.id} ended {status.status}"
    return text, (str(error_type) if error_type else None), details


def interpret_status(status: JobStatus) -> JobOutcome:
    """Map RunPod's job status onto the task: complete, fail (retryable or not), running,
    or superseded (the worker's fence refused it: nothing ran, nothing is written)."""
    if status.status == "COMPLETED":
        output = status.output
        if isinstance(output, dict) and output.get("error"):
            # a handler that returned {"error"} is FAILED on RunPod; be safe if it arrives as output
            return _failed(status, str(output["error"]), output.get("error_type"), output.get("details"), output)
        return JobOutcome("complete", output_url=primary_output_url(output),
                          result=_slim({"output": output, "delayTime": status.delayTime,
                                        "executionTime": status.executionTime, "runpod_job_id": status.id}))
    if status.status == "FAILED":
        text, error_type, details = _error_fields(status)
        return _failed(status, text, error_type, details, status.output)
    if status.status == "TIMED_OUT":
        return JobOutcome("fail", error=f"RunPod job {status.id} timed out (executionTimeout)", retryable=True)
    if status.status == "CANCELLED":
        return JobOutcome("fail", error=f"RunPod job {status.id} was cancelled on RunPod", retryable=True)
    return JobOutcome("running", progress=status.output)


def _failed(status: JobStatus, message: str, error_type: str | None, details: Any, output: Any) -> JobOutcome:
    if error_type == SUPERSEDED_ERROR_TYPE:
        return JobOutcome("superseded", error=message, retryable=False)
    text = f"{error_type}: {message}" if error_type and not message.startswith(str(error_type)) else message
    if details:
        text = f"{text} | details: {json.dumps(details)[:1500]}"
    return JobOutcome("fail", error=text, retryable=error_type not in PERMANENT_ERROR_TYPES,
                      result=_slim({"output": output, "runpod_job_id": status.id}) if output else None)
