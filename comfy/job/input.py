"""The job input: what a RunPod request may carry, validated at the boundary.

The file models it carries live with the parts that use them: `ImageInput` and
`MediaInput` in comfy/media/request.py, `ModelRequest` in comfy/models/request.py,
`OutputRequest` in comfy/delivery/request.py.

Accepts runpod-workers/worker-comfyui's input unchanged (`workflow`, `images`,
`comfy_org_api_key`) and the seed's task params (`video_url`, `video_node_id`,
`video_input_field`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from comfy.delivery.request import OutputRequest, storage_key_problem
from comfy.errors import InvalidJobInput
from comfy.job.validation import find_cycle
from comfy.media.downloads import InputTooLarge
from comfy.media.request import ImageInput, MediaInput, base64_decoded_size
from comfy.models.request import ModelRequest, check_model_list

MAX_TIMEOUT_S = 24 * 3600.0


class JobInput(BaseModel):
    """One job: a ComfyUI workflow in API format and the files it needs."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(description="API-format graph: {node_id: {class_type, inputs}}; or its JSON text")
    images: list[ImageInput] = Field(default_factory=list, description="worker-comfyui style input images")
    video_url: str | None = Field(default=None, description="seed params: URL of a video to load")
    video_node_id: str | None = Field(default=None, description="seed params: node that loads the video")
    video_input_field: str = Field(default="video", description="seed params: that node's input field")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="execution deadline")
    comfy_org_api_key: str | None = Field(default=None, repr=False, description="for Comfy.org API nodes")
    include_temp: bool = Field(default=False, description="also return temp files (PreviewImage)")
    inputs: list[MediaInput] = Field(default_factory=list, description="files for any node: url, base64 or data URI")
    output: OutputRequest = Field(default_factory=OutputRequest, description="where output files go")
    models: list[ModelRequest] = Field(
        default_factory=list, description="model files to fetch into the shared cache before the workflow runs"
    )
    task_id: str | None = Field(
        default=None, max_length=200, description="the Supabase task this job runs (set by the dispatcher; for heartbeats and logs)"
    )
    lease_token: str | None = Field(
        default=None, max_length=200,
        description="the dispatcher's claim on that task; handler.py's start fence checks it before the job runs",
    )

    @field_validator("task_id")
    @classmethod
    def _task_id_is_one_key_segment(cls, value: str | None) -> str | None:
        # It names the job's folder in storage (`<OUTPUT_PREFIX>/<task_id>/...`).
        if value is not None:
            problem = "has a '/'" if "/" in value else storage_key_problem(value)
            if problem:
                raise ValueError(f"task_id {value[:100]!r} cannot name a storage folder: it {problem}")
        return value

    @field_validator("workflow", mode="before")
    @classmethod
    def _parse_workflow(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"workflow is a string but not valid JSON ({exc})") from None
            except RecursionError:
                raise ValueError(f"workflow is nested deeper than {MAX_DEPTH} levels") from None
            problem = json_value_problem(value, "workflow")
            if problem:
                raise ValueError(problem)
        if not isinstance(value, dict):
            raise ValueError(f"workflow must be an object (API format), not {type(value).__name__}")
        if "nodes" in value and "links" in value:
            raise ValueError(
                "workflow is in ComfyUI's UI format (it has 'nodes' and 'links'); "
                "export it in API format instead (Workflow > Export (API))"
            )
        if not value:
            raise ValueError("workflow is empty")
        problems = []
        for node_id, node in value.items():
            if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
                problems.append(f"node id {str(node_id)[:40]!r}: node ids are 1-64 ASCII letters, digits, "
                                "'_', '-', '.' or ':' (as ComfyUI writes them: '3', '12:5')")
            elif not isinstance(node, dict):
                problems.append(f"node {node_id}: must be an object with class_type and inputs")
            elif not isinstance(node.get("class_type"), str) or not node["class_type"]:
                problems.append(f"node {node_id}: class_type is missing")
            elif not isinstance(node.get("inputs", {}), dict):
                problems.append(f"node {node_id} ({node['class_type']}): inputs must be an object")
        if problems:
            raise ValueError("; ".join(problems))
        cycle = find_cycle(value)
        if cycle:
            raise ValueError(f"nodes {' -> '.join(cycle)} form a cycle: a node cannot depend on its own output")
        return value

    @field_validator("images")
    @classmethod
    def _unique_names(cls, images: list[ImageInput], info: Any) -> list[ImageInput]:
        limit = (info.context or {}).get("max_images")
        if limit is not None and len(images) > limit:
            raise ValueError(f"{len(images)} images given; at most {limit} per job (MAX_INPUT_IMAGES)")
        seen: set[str] = set()
        for image in images:
            if image.name in seen:
                raise ValueError(f"image name {image.name!r} is given twice")
            seen.add(image.name)
        return images

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: list[ModelRequest]) -> list[ModelRequest]:
        return check_model_list(models)

    @field_validator("video_node_id", mode="before")
    @classmethod
    def _node_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("video_url")
    @classmethod
    def _check_video_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("video_url must be an http or https URL")
        return value

    @model_validator(mode="after")
    def _video_target(self) -> "JobInput":
        if self.video_url and not self.video_node_id:
            raise ValueError("video_url is given but video_node_id is not: name the node that loads the video")
        if self.video_node_id and not self.video_url:
            raise ValueError("video_node_id is given but video_url is not")
        if self.video_node_id and self.video_node_id not in self.workflow:
            raise ValueError(f"video_node_id {self.video_node_id!r} is not a node of the workflow")
        if self.video_url and self.video_node_id:
            # The seed's params are one more input: same download, same checks.
            self.inputs.append(MediaInput(
                node=self.video_node_id, field=self.video_input_field, url=self.video_url, kind="video"
            ))
        return self

    @model_validator(mode="after")
    def _inputs_target_nodes(self) -> "JobInput":
        targets: set[tuple[str, str]] = set()
        for index, item in enumerate(self.inputs):
            if item.node not in self.workflow:
                raise ValueError(f"inputs[{index}]: node {item.node!r} is not a node of the workflow")
            if (item.node, item.field) in targets:
                raise ValueError(f"inputs[{index}]: node {item.node!r} field {item.field!r} is given two files")
            targets.add((item.node, item.field))
        return self


MAX_DEPTH = 64  # API-format graphs are 5 or 6 levels deep; far deeper is an attack, not a workflow
_NODE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def json_value_problem(value: Any, path: str = "input", max_depth: int = MAX_DEPTH) -> str | None:
    """What makes `value` unfit as job input JSON, or None: nesting deeper than `max_depth`,
    or NaN/Infinity (Python's json module reads them; they are not JSON, and ComfyUI
    would get them as numbers). Iterative, so no depth can overflow the stack."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where[:200]}: {item} is not a number JSON allows (NaN and Infinity are refused)"
        if isinstance(item, (dict, list, tuple)):
            if depth >= max_depth:
                return f"{where[:200]}: nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, f"{where}.{key}", depth + 1) for key, child in pairs)
    return None


def parse_job_input(raw: Any, max_images: int | None = None, max_input_bytes: int | None = None) -> JobInput:
    """Validate a job's `input`; raise InvalidJobInput listing every problem by field
    (InputTooLarge for an image over `max_input_bytes`)."""
    if not isinstance(raw, dict):
        raise InvalidJobInput(f"job input must be a JSON object, not {type(raw).__name__}")
    problem = json_value_problem(raw)
    if problem:
        field = problem.split(":", 1)[0].removeprefix("input.") or "input"
        raise InvalidJobInput(f"invalid job input: {problem.removeprefix('input.')}",
                              details=[{"field": field, "message": problem.split(": ", 1)[-1]}])
    if "workflow" not in raw:
        raise InvalidJobInput("job input has no 'workflow' (an API-format ComfyUI graph)")
    images = raw.get("images")
    if max_images is not None and isinstance(images, list) and len(images) > max_images:
        # Refuse before decoding thousands of payloads.
        raise InvalidJobInput(
            f"images: {len(images)} images given; at most {max_images} per job (MAX_INPUT_IMAGES)",
            details=[{"field": "images", "message": f"at most {max_images} images"}],
        )
    if max_input_bytes is not None and isinstance(images, list):
        for index, image in enumerate(images):
            payload = image.get("image") if isinstance(image, dict) else None
            if isinstance(payload, str) and (size := base64_decoded_size(payload)) > max_input_bytes:
                raise InputTooLarge(  # before decoding it
                    f"images.{index} ({str(image.get('name'))[:100]!r}) is {size} bytes, larger than MAX_INPUT_BYTES "
                    f"({max_input_bytes} bytes)", details={"field": f"images.{index}", "limit_bytes": max_input_bytes},
                )
    try:
        return JobInput.model_validate(raw, context={"max_images": max_images})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(part) for part in err["loc"]) or "input"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append({"field": field, "message": message})
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidJobInput(f"invalid job input: {summary}", details=problems) from None
