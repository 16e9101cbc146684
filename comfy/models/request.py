"""A model file a job needs: where to download it, its sha256, and where ComfyUI finds it.

`comfy.job.input.JobInput` carries a list of these as `models`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comfy.media.request import check_file_name
from comfy.models.files import MODEL_FOLDERS, valid_folder

MAX_MODELS_PER_JOB = 32
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelRequest(BaseModel):
    """One model file, made visible to ComfyUI as `<folder>/<name>` before the workflow runs."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL of the file (a Hugging Face `resolve/<commit>/...` URL, a CDN, ...)")
    sha256: str = Field(description="the file's sha256 (64 hex characters); the download is checked against it")
    folder: str = Field(description="ComfyUI model folder: checkpoints, loras, vae, diffusion_models, ... (may add subfolders)")
    name: str | None = Field(default=None, description="file name the workflow uses; default: the URL's last path segment")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value, re.IGNORECASE):
            raise ValueError("url must be an http or https URL")
        return value

    @field_validator("sha256")
    @classmethod
    def _check_sha256(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256.match(value):
            raise ValueError("sha256 must be 64 hex characters (sha256sum of the file)")
        return value

    @field_validator("folder")
    @classmethod
    def _check_folder(cls, value: str) -> str:
        value = value.strip("/")
        if not valid_folder(value):
            raise ValueError(f"unknown model folder {value!r}; use one of ComfyUI's: " + ", ".join(sorted(MODEL_FOLDERS)))
        return value

    @model_validator(mode="after")
    def _name(self) -> "ModelRequest":
        if self.name is None:
            self.name = unquote(PurePosixPath(urlsplit(self.url).path).name)
            if not self.name:
                raise ValueError(f"the URL {self.url!r} has no file name: give `name`")
        try:
            check_file_name(self.name)
        except ValueError as exc:
            raise ValueError(f"model name: {exc}") from None
        return self

    @property
    def key(self) -> str:
        """`folder/name`: where the file sits under the cache, and how a workflow names it in its folder."""
        return f"{self.folder}/{self.name}"


def check_model_list(models: list[ModelRequest]) -> list[ModelRequest]:
    """At most MAX_MODELS_PER_JOB, and no target given twice with different files."""
    if len(models) > MAX_MODELS_PER_JOB:
        raise ValueError(f"{len(models)} models given; at most {MAX_MODELS_PER_JOB} per job")
    seen: dict[str, ModelRequest] = {}
    unique = []
    for model in models:
        earlier = seen.get(model.key)
        if earlier is None:
            seen[model.key] = model
            unique.append(model)
        elif earlier.sha256 != model.sha256:
            raise ValueError(f"model {model.key} is given twice with different sha256")
    return unique
