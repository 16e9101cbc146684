"""Settings of media in and files out: download limits, URL safety, storage targets.

Read from the environment for every job (a few dict look-ups), so a test or an operator
can change them without restarting the worker. Every value can also be passed directly
(`MediaSettings(allow_private_urls=True)`), which is how the unit tests use them.
Kept apart from comfy/settings.py, which must stay standard-library only.
"""

from __future__ import annotations

import os
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfy.errors import JobError

GIB = 1024**3
MIB = 1024**2


class MediaSettingsError(JobError):
    """A media or storage environment variable has a value the worker cannot use."""

    error_type = "invalid_settings"


class MediaSettings(BaseModel):
    """Limits for inputs and where outputs go by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Inputs
    allow_private_urls: bool = False  # ALLOW_PRIVATE_URLS: allow loopback/private/metadata hosts
    max_input_bytes: int = Field(default=2 * GIB, gt=0)  # MAX_INPUT_BYTES: per downloaded or decoded file
    download_connect_timeout_s: float = Field(default=10.0, gt=0)  # DOWNLOAD_CONNECT_TIMEOUT_S
    download_read_timeout_s: float = Field(default=60.0, gt=0)  # DOWNLOAD_READ_TIMEOUT_S: silence between bytes
    download_total_timeout_s: float = Field(default=1800.0, gt=0)  # DOWNLOAD_TOTAL_TIMEOUT_S: one file, all attempts
    download_retries: int = Field(default=3, ge=0, le=10)  # DOWNLOAD_RETRIES: extra attempts on transient failures
    download_max_redirects: int = Field(default=5, ge=0, le=20)  # DOWNLOAD_MAX_REDIRECTS
    retry_backoff_s: float = Field(default=1.0, ge=0)  # RETRY_BACKOFF_S: first wait; doubles per attempt

    # Outputs
    output_mode: Literal["inline", "s3", "supabase"] | None = None  # OUTPUT_MODE; unset: storage if configured
    # RESULT_MAX_BYTES: the job result as the SDK encodes it (files' base64, text, metadata). RunPod
    # keeps /run results up to 10 MB; 9 MB leaves room for its envelope. /runsync allows 20 MB.
    result_max_bytes: int = Field(default=9_000_000, ge=64 * 1024)
    upload_retries: int = Field(default=3, ge=0, le=10)  # UPLOAD_RETRIES: extra attempts per file
    url_expiry_s: int = Field(default=7 * 24 * 3600, gt=0, le=7 * 24 * 3600)  # OUTPUT_URL_EXPIRY_S
    storage_prefix: str | None = None  # OUTPUT_PREFIX: default `<task or job id>/`
    multipart_chunk_bytes: int = Field(default=8 * MIB, ge=5 * MIB)  # UPLOAD_CHUNK_BYTES
    upload_concurrency: int = Field(default=10, ge=1, le=32)  # UPLOAD_CONCURRENCY: parts, or small files, in flight

    # S3 (RunPod's names)
    s3_endpoint_url: str | None = None  # BUCKET_ENDPOINT_URL (may include the bucket: https://host/bucket)
    s3_bucket: str | None = None  # BUCKET_NAME: when the endpoint URL does not name it
    s3_access_key_id: str | None = Field(default=None, repr=False)  # BUCKET_ACCESS_KEY_ID
    s3_secret_access_key: str | None = Field(default=None, repr=False)  # BUCKET_SECRET_ACCESS_KEY
    s3_region: str = "us-east-1"  # BUCKET_REGION

    # Supabase Storage
    supabase_url: str | None = None  # SUPABASE_URL
    supabase_service_role_key: str | None = Field(default=None, repr=False)  # SUPABASE_SERVICE_ROLE_KEY
    supabase_bucket: str | None = None  # SUPABASE_STORAGE_BUCKET
    supabase_public: bool = False  # SUPABASE_STORAGE_PUBLIC: public URLs instead of signed ones
    supabase_s3_endpoint_url: str | None = None  # SUPABASE_S3_ENDPOINT_URL; default <SUPABASE_URL>/storage/v1/s3
    supabase_s3_access_key_id: str | None = Field(default=None, repr=False)  # SUPABASE_S3_ACCESS_KEY_ID
    supabase_s3_secret_access_key: str | None = Field(default=None, repr=False)  # SUPABASE_S3_SECRET_ACCESS_KEY
    supabase_s3_region: str = "us-east-1"  # SUPABASE_S3_REGION: the project's region

    @property
    def s3_configured(self) -> bool:
        return bool(self.s3_endpoint_url or self.s3_bucket) and bool(self.s3_access_key_id and self.s3_secret_access_key)

    @property
    def supabase_configured(self) -> bool:
        return bool(self.supabase_url and self.supabase_service_role_key and self.supabase_bucket)

    def default_output_mode(self) -> str:
        """OUTPUT_MODE if set; else Supabase, then S3, when configured; else inline."""
        if self.output_mode:
            return self.output_mode
        if self.supabase_configured:
            return "supabase"
        if self.s3_configured:
            return "s3"
        return "inline"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "MediaSettings":
        """Read every variable in ENV_VARS; a bad value raises MediaSettingsError naming it."""
        env = os.environ if env is None else env
        replaced = [f"{old} was replaced by {new}" for old, new in REPLACED_VARS.items() if env.get(old, "").strip()]
        if replaced:  # an old limit silently ignored would change what the worker returns
            raise MediaSettingsError("invalid media settings: " + "; ".join(replaced))
        values = {attr: env[var].strip() for attr, var in ENV_VARS.items() if env.get(var, "").strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{ENV_VARS[str(err['loc'][0])]}: {err['msg']}" if err["loc"] else err["msg"]
                for err in exc.errors(include_url=False)
            ]
            raise MediaSettingsError("invalid media settings: " + "; ".join(problems)) from None


ENV_VARS: dict[str, str] = {
    "allow_private_urls": "ALLOW_PRIVATE_URLS",
    "max_input_bytes": "MAX_INPUT_BYTES",
    "download_connect_timeout_s": "DOWNLOAD_CONNECT_TIMEOUT_S",
    "download_read_timeout_s": "DOWNLOAD_READ_TIMEOUT_S",
    "download_total_timeout_s": "DOWNLOAD_TOTAL_TIMEOUT_S",
    "download_retries": "DOWNLOAD_RETRIES",
    "download_max_redirects": "DOWNLOAD_MAX_REDIRECTS",
    "retry_backoff_s": "RETRY_BACKOFF_S",
    "output_mode": "OUTPUT_MODE",
    "result_max_bytes": "RESULT_MAX_BYTES",
    "upload_retries": "UPLOAD_RETRIES",
    "url_expiry_s": "OUTPUT_URL_EXPIRY_S",
    "storage_prefix": "OUTPUT_PREFIX",
    "multipart_chunk_bytes": "UPLOAD_CHUNK_BYTES",
    "upload_concurrency": "UPLOAD_CONCURRENCY",
    "s3_endpoint_url": "BUCKET_ENDPOINT_URL",
    "s3_bucket": "BUCKET_NAME",
    "s3_access_key_id": "BUCKET_ACCESS_KEY_ID",
    "s3_secret_access_key": "BUCKET_SECRET_ACCESS_KEY",
    "s3_region": "BUCKET_REGION",
    "supabase_url": "SUPABASE_URL",
    "supabase_service_role_key": "SUPABASE_SERVICE_ROLE_KEY",
    "supabase_bucket": "SUPABASE_STORAGE_BUCKET",
    "supabase_public": "SUPABASE_STORAGE_PUBLIC",
    "supabase_s3_endpoint_url": "SUPABASE_S3_ENDPOINT_URL",
    "supabase_s3_access_key_id": "SUPABASE_S3_ACCESS_KEY_ID",
    "supabase_s3_secret_access_key": "SUPABASE_S3_SECRET_ACCESS_KEY",
    "supabase_s3_region": "SUPABASE_S3_REGION",
}

# Variables of earlier versions whose meaning changed: set, they fail loudly instead of being ignored.
REPLACED_VARS: dict[str, str] = {
    "INLINE_MAX_BYTES": "RESULT_MAX_BYTES (the whole encoded result, not the raw files)",
    "SUPABASE_STANDARD_UPLOAD_MAX_BYTES": "resumable (TUS) uploads, which have no such cap",
}
