"""Errors a job can end with. Each knows how to become a RunPod result.

A result dict with `error` marks the RunPod job FAILED; the SDK moves every other key
into `output`, so `details` and `error_type` reach the caller as structured data.
"""

from __future__ import annotations

from typing import Any


class JobError(Exception):
    """A job failed for a reason the caller should read."""

    error_type = "job_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # Set when ComfyUI had to be killed or given up on for this job: "after_crash" asks
        # RunPod to replace the worker if REFRESH_WORKER_AFTER_CRASH is on, "always" asks anyway.
        self.refresh_worker: str | None = None

    def to_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {"error": self.message, "error_type": self.error_type}
        if self.details is not None:
            result["details"] = self.details
        return result


class InvalidJobInput(JobError):
    """The job input does not have the shape or values the worker accepts."""

    error_type = "invalid_input"


class InvalidWorkflow(JobError):
    """The workflow graph does not fit the nodes this ComfyUI has."""

    error_type = "invalid_workflow"


class PromptRejected(JobError):
    """ComfyUI answered 400 to POST /prompt."""

    error_type = "prompt_rejected"


class ExecutionFailed(JobError):
    """A node raised while ComfyUI ran the workflow."""

    error_type = "execution_error"


class ExecutionInterrupted(JobError):
    """ComfyUI reported the prompt interrupted (not by this worker's deadline)."""

    error_type = "interrupted"


class JobTimeout(JobError):
    """The job ran past its deadline (`timeout_s`); a running prompt was interrupted."""

    error_type = "timeout"


class JobCancelled(JobError):
    """RunPod cancelled the job; a running prompt was interrupted."""

    error_type = "cancelled"


class ComfyUnavailable(JobError):
    """ComfyUI could not be started or reached, or died during the job."""

    error_type = "comfy_unavailable"


class ComfyUnresponsive(ComfyUnavailable):
    """ComfyUI accepted a connection but did not answer in time: hung, deadlocked or stopped."""


class InputWriteFailed(JobError):
    """An input file could not be written where ComfyUI reads it (read-only folder, full disk).

    A fault of the worker's machine, not of the job: another worker may well succeed.
    """

    error_type = "input_write_failed"


class OutputError(JobError):
    """An output file could not be read or delivered."""

    error_type = "output_error"


class OutputTooLarge(OutputError):
    """The result would be larger than RESULT_MAX_BYTES and storage could not take the rest."""

    error_type = "output_too_large"


class TaskSuperseded(JobError):
    """The job's claim on its Supabase task is gone (start_task refused it): nothing was run."""

    error_type = "superseded"
