"""The job input: what a RunPod request may carry, validated at the boundary.

Accepts runpod-workers/worker-comfyui's input unchanged (`workflow`, `images`,
`comfy_org_api_key`) and the seed's task params (`video_url`, `video_node_id`,
`video_input_field`).
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any, Literal

import pybase64

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from comfy.errors import InvalidJobInput

# One path segment of a file name: no separators, no leading dot, no control characters.
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._ -]{0,199}$")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,", re.ASCII)
MAX_TIMEOUT_S = 24 * 3600.0


def check_file_name(name: str) -> str:
    """A relative file name for ComfyUI's input folder: `a.png` or `sub/a.png`.

    Refuses absolute paths, `..`, backslashes and characters outside [A-Za-z0-9._ -].
    """
    if not name:
        raise ValueError("file name is empty")
    if name.startswith("/") or "\\" in name:
        raise ValueError(f"file name {name!r} must be a relative path with '/' separators")
    segments = name.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"file name {name!r} has an empty, '.' or '..' path segment")
        if not _SAFE_SEGMENT.match(segment):
            raise ValueError(
                f"file name {name!r} has characters outside letters, digits, '.', '_', '-' and space "
                "(or starts with '.', '-' or a space)"
            )
    if len(segments) > 4:
        raise ValueError(f"file name {name!r} is nested too deep (4 folders at most)")
    return name


def decode_base64_payload(value: str) -> bytes:
    """Decode plain base64 or a `data:...;base64,` URI; raise ValueError saying what is wrong."""
    payload = value
    match = _DATA_URI.match(value)
    if match:
        if not match.group("b64"):
            raise ValueError("data URI is not base64-encoded (';base64,' missing)")
        payload = value[match.end():]
    elif value.startswith("data:"):
        raise ValueError("malformed data URI")
    try:
        # pybase64 (SIMD): about 50x faster than the standard library on a 4 MB image.
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    compact = "".join(payload.split())  # line breaks are common in pasted base64
    try:
        return pybase64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({exc})") from None


class ImageInput(BaseModel):
    """An image for the workflow, exactly as worker-comfyui v5 takes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="file name the workflow refers to, e.g. in LoadImage's `image`")
    image: str = Field(description="base64 or a data URI", repr=False)
    _data: bytes = PrivateAttr(default=b"")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_file_name(value)

    @model_validator(mode="after")
    def _decode(self) -> "ImageInput":
        try:
            self._data = decode_base64_payload(self.image)
        except ValueError as exc:
            raise ValueError(f"image {self.name!r}: {exc}") from None
        if not self._data:
            raise ValueError(f"image {self.name!r} is empty")
        return self

    @property
    def data(self) -> bytes:
        return self._data


class MediaInput(BaseModel):
    """A file for any node's field: fetched from a URL or decoded from base64 / a data URI.

    The file gets a unique per-job name in ComfyUI's input folder and that name is written
    into `workflow[node].inputs[field]`.
    """

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="id of the node that loads the file, e.g. a LoadImage or LoadVideo")
    field: str = Field(min_length=1, max_length=200, description="that node's input, e.g. `image` or `file`")
    url: str | None = Field(default=None, description="http(s) URL to download")
    base64: str | None = Field(default=None, repr=False, description="the file as base64")
    data_uri: str | None = Field(default=None, repr=False, description="the file as a data: URI")
    name: str | None = Field(default=None, description="file name to keep (made unique per job); default from the URL")
    kind: Literal["image", "video", "audio", "file"] | None = Field(default=None, description="what the file is")

    @field_validator("node", mode="before")
    @classmethod
    def _node_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return None if value is None else check_file_name(value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value, re.IGNORECASE):
            raise ValueError("url must be an http or https URL")
        return value

    @field_validator("data_uri")
    @classmethod
    def _check_data_uri(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("data:"):
            raise ValueError("data_uri must start with 'data:' (use `base64` for plain base64)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "MediaInput":
        given = [key for key in ("url", "base64", "data_uri") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"input for node {self.node} field {self.field!r}: give exactly one of url, base64, data_uri "
                f"({'none' if not given else ', '.join(given)} given)"
            )
        return self


class OutputRequest(BaseModel):
    """Where this job's output files go; unset fields come from the environment."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["inline", "s3", "supabase"] | None = Field(
        default=None, description="inline (base64 in the result), s3 or supabase; default from OUTPUT_MODE / env"
    )
    prefix: str | None = Field(default=None, max_length=500, description="storage path prefix; default `<task or job id>/`")
    bucket: str | None = Field(default=None, max_length=255, description="bucket name (s3 or supabase)")
    url_expiry_s: int | None = Field(default=None, gt=0, le=7 * 24 * 3600, description="lifetime of signed/presigned URLs")
    public: bool | None = Field(default=None, description="supabase: public URLs instead of signed ones")
    endpoint_url: str | None = Field(default=None, description="s3: endpoint of an S3-compatible service")
    access_key_id: str | None = Field(default=None, repr=False, description="s3: per-request credentials")
    secret_access_key: str | None = Field(default=None, repr=False, description="s3: per-request credentials")
    region: str | None = Field(default=None, max_length=64, description="s3: region")
    poster: bool | None = Field(
        default=None, description="s3/supabase: also upload each video's first frame as JPEG (default on)"
    )

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is None or value.strip("/") == "":
            return value
        check_file_name(value.strip("/"))
        return value.strip("/") + "/"

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value, re.IGNORECASE):
            raise ValueError("endpoint_url must be an http or https URL")
        return value

    @model_validator(mode="after")
    def _fits_mode(self) -> "OutputRequest":
        s3_only = [k for k in ("endpoint_url", "access_key_id", "secret_access_key", "region") if getattr(self, k)]
        if s3_only and self.mode != "s3":
            raise ValueError(f"{', '.join(s3_only)} only apply to mode 's3'")
        if self.public is not None and self.mode != "supabase":
            raise ValueError("public only applies to mode 'supabase'")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("access_key_id and secret_access_key go together")
        if self.endpoint_url and not self.access_key_id:
            # Otherwise the worker's BUCKET_* keys would sign requests to a host the job chose:
            # the key id and valid signatures would leak to whoever runs that endpoint.
            raise ValueError(
                "endpoint_url needs the job's own access_key_id and secret_access_key "
                "(the worker's BUCKET_* keys are only used with BUCKET_ENDPOINT_URL)"
            )
        if self.mode == "inline" and (self.bucket or self.prefix or self.url_expiry_s or self.poster):
            raise ValueError("bucket, prefix, url_expiry_s and poster do not apply to mode 'inline'")
        return self


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
    task_id: str | None = Field(
        default=None, max_length=200, description="the Supabase task this job runs (set by the dispatcher; for heartbeats and logs)"
    )

    @field_validator("workflow", mode="before")
    @classmethod
    def _parse_workflow(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"workflow is a string but not valid JSON ({exc})") from None
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
            if not isinstance(node, dict):
                problems.append(f"node {node_id}: must be an object with class_type and inputs")
            elif not isinstance(node.get("class_type"), str) or not node["class_type"]:
                problems.append(f"node {node_id}: class_type is missing")
            elif not isinstance(node.get("inputs", {}), dict):
                problems.append(f"node {node_id} ({node['class_type']}): inputs must be an object")
        if problems:
            raise ValueError("; ".join(problems))
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


def parse_job_input(raw: Any, max_images: int | None = None) -> JobInput:
    """Validate a job's `input`; raise InvalidJobInput listing every problem by field."""
    if not isinstance(raw, dict):
        raise InvalidJobInput(f"job input must be a JSON object, not {type(raw).__name__}")
    if "workflow" not in raw:
        raise InvalidJobInput("job input has no 'workflow' (an API-format ComfyUI graph)")
    if max_images is not None and isinstance(raw.get("images"), list) and len(raw["images"]) > max_images:
        # Refuse before decoding thousands of payloads.
        raise InvalidJobInput(
            f"images: {len(raw['images'])} images given; at most {max_images} per job (MAX_INPUT_IMAGES)",
            details=[{"field": "images", "message": f"at most {max_images} images"}],
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
