"""Between a task row and a RunPod job: the job input built from params, and the task's
outcome read from RunPod's job status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from supabase_sync.config import Route
from supabase_sync.runpod_api import JobStatus

MAX_RUN_BODY_BYTES = 10 * 1024 * 1024  # RunPod's /run limit
# Worker errors that another attempt cannot fix (comfy/errors.py error_type values).
PERMANENT_ERROR_TYPES = frozenset({"invalid_input", "invalid_workflow", "prompt_rejected"})
# Inline file payloads larger than this are not copied into tasks.result (use uploads).
MAX_INLINE_RESULT_BYTES = 64 * 1024


class InvalidTaskParams(ValueError):
    """The task's params cannot become a job; the message says what is wrong. Not retried."""


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


def build_job_input(task_id: UUID, task_type: str, params: Any, route: Route) -> dict[str, Any]:
    """The `input` of the RunPod job for a task; raises InvalidTaskParams when it cannot be built.

    comfy routes: the seed's params (workflow, video_url, video_node_id, video_input_field,
    and the worker's images, inputs, output, timeout_s...) plus `task_id`, and the route's
    output delivery (bucket, prefix/<task_id>) unless the task names its own.
    passthrough routes: params as they are, plus task_id and task_type.
    """
    job = dict(_params_object(task_id, params))
    if route.kind == "comfy":
        if "workflow" not in job:
            raise InvalidTaskParams("params has no 'workflow' (a ComfyUI graph in API format)")
        workflow = job["workflow"]
        if isinstance(workflow, str):
            try:
                workflow = json.loads(workflow)
            except json.JSONDecodeError as exc:
                raise InvalidTaskParams(f"params.workflow is a string that is not valid JSON ({exc})") from None
        if not isinstance(workflow, dict) or not workflow:
            raise InvalidTaskParams("params.workflow must be a non-empty JSON object (API format: {node_id: {class_type, inputs}})")
        job["workflow"] = workflow
        if route.output is not None:
            delivery = route.output.model_dump(exclude_none=True)
            delivery["prefix"] = f"{route.output.prefix.rstrip('/')}/{task_id}"
            given = job.get("output")
            job["output"] = {**delivery, **given} if isinstance(given, dict) else delivery
    else:
        job["task_type"] = task_type
    job["task_id"] = str(task_id)
    size = len(json.dumps({"input": job}).encode())
    if size > MAX_RUN_BODY_BYTES:
        raise InvalidTaskParams(
            f"the job input is {size} bytes, over RunPod's 10 MB /run limit: pass large files as URLs"
        )
    return job


@dataclass(frozen=True)
class JobOutcome:
    """What a finished RunPod job means for its task."""

    kind: str  # "complete" | "fail" | "running"
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


def _error_text(status: JobStatus) -> str:
    error = status.error
    if isinstance(error, str):
        try:  # a raising handler: the SDK sends a JSON string with error_type / error_message
            parsed = json.loads(error)
            if isinstance(parsed, dict) and parsed.get("error_message"):
                return f"{parsed.get('error_type', 'error')}: {parsed['error_message']}"
        except json.JSONDecodeError:
            pass
        return error
    if error is not None:
        return json.dumps(error)[:2000]
    return f"RunPod job {status.id} ended {status.status}"


def interpret_status(status: JobStatus) -> JobOutcome:
    """Map RunPod's job status onto the task: complete, fail (retryable or not), or running."""
    if status.status == "COMPLETED":
        output = status.output
        if isinstance(output, dict) and output.get("error"):
            # a handler that returned {"error"} is FAILED on RunPod; be safe if it arrives as output
            return _failed(status, str(output["error"]), output)
        return JobOutcome("complete", output_url=primary_output_url(output),
                          result=_slim({"output": output, "delayTime": status.delayTime,
                                        "executionTime": status.executionTime, "runpod_job_id": status.id}))
    if status.status == "FAILED":
        return _failed(status, _error_text(status), status.output)
    if status.status == "TIMED_OUT":
        return JobOutcome("fail", error=f"RunPod job {status.id} timed out (executionTimeout)", retryable=True)
    if status.status == "CANCELLED":
        return JobOutcome("fail", error=f"RunPod job {status.id} was cancelled on RunPod", retryable=True)
    return JobOutcome("running", progress=status.output)


def _failed(status: JobStatus, message: str, output: Any) -> JobOutcome:
    error_type = output.get("error_type") if isinstance(output, dict) else None
    details = output.get("details") if isinstance(output, dict) else None
    text = f"{error_type}: {message}" if error_type and not message.startswith(str(error_type)) else message
    if details:
        text = f"{text} | details: {json.dumps(details)[:1500]}"
    return JobOutcome("fail", error=text, retryable=error_type not in PERMANENT_ERROR_TYPES,
                      result=_slim({"output": output, "runpod_job_id": status.id}) if output else None)
