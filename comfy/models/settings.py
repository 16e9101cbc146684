"""Settings of the model cache that jobs read: the byte cap and the Hugging Face token.

Read from the environment for every job, like MediaSettings (downloads themselves use the
media download settings: timeouts, retries, redirects, URL safety). Where the cache lives
(MODEL_CACHE_DIR) is a WorkerSettings value: ComfyUI is told at start-up.
"""

from __future__ import annotations

import os
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfy.errors import JobError


class ModelSettingsError(JobError):
    """A model cache environment variable has a value the worker cannot use."""

    error_type = "invalid_settings"


class ModelSettings(BaseModel):
    """The cap on the cache's size and the token for gated Hugging Face files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cache_max_bytes: int | None = Field(default=None, gt=0)  # MODEL_CACHE_MAX_BYTES; unset: no cap
    hf_token: str | None = Field(default=None, repr=False)  # HF_TOKEN: sent to huggingface.co only

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ModelSettings":
        env = os.environ if env is None else env
        values = {attr: env[var].strip() for attr, var in ENV_VARS.items() if env.get(var, "").strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [f"{ENV_VARS[str(err['loc'][0])]}: {err['msg']}" for err in exc.errors(include_url=False)]
            raise ModelSettingsError("invalid model cache settings: " + "; ".join(problems)) from None


ENV_VARS: dict[str, str] = {
    "cache_max_bytes": "MODEL_CACHE_MAX_BYTES",
    "hf_token": "HF_TOKEN",
}
