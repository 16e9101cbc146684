"""What a job may ask of delivery: where its output files go (`output`), validated at the
boundary. `comfy.job.input.JobInput` carries it; unset fields come from the environment.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comfy.media.request import check_file_name


# Control and format characters (U+202E RIGHT-TO-LEFT OVERRIDE, zero-width ones, ...), line
# separators, surrogates and private-use characters make a key that reads as something else.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
MAX_KEY_BYTES = 1024  # S3's limit on an object key


def storage_key_problem(key: str) -> str | None:
    """What is wrong with `key` (or part of one) as an object key, or None when it is safe.

    Every '/'-separated segment must be non-empty, not '.' or '..', and free of backslashes
    and of control, format (bidi overrides) and separator characters.
    """
    if key.startswith("/"):
        return "is an absolute path"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return f"has an empty, '.' or '..' segment ({key[:100]!r})"
        if "\\" in segment:
            return "has a backslash"
        for char in segment:
            if unicodedata.category(char) in _UNSAFE_CATEGORIES:
                return f"has the control or formatting character U+{ord(char):04X}"
    return None


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
