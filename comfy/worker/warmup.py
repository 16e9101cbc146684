"""The warm-up: one workflow run after ComfyUI is ready and before the worker takes a job.

RunPod's SDK asks for jobs only once `runpod.serverless.start` runs, so handler.py runs the
warm-up first: model loads (and, with `models`, downloads into the cache) happen before
any billed job waits for them. WARMUP_WORKFLOW is a file or inline JSON: an API-format
graph, or a whole job input (`{"workflow": ..., "models": [...], "timeout_s": ...}`).

It runs through the job path itself (comfy.job.run.run_job) with its outputs discarded:
nothing is delivered and every file it wrote is removed. A failure is logged with its
error and does not stop the worker unless WARMUP_REQUIRED=true. Its time is logged and
added to the first job's `timings` as `warmup_ms` (with `warmup_error` beside the result
when it failed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime

log = logging.getLogger("comfy.worker.warmup")

WARMUP_JOB_ID = "warmup"


class WarmupError(ValueError):
    """WARMUP_WORKFLOW cannot be read as a workflow."""


@dataclass
class WarmupReport:
    """How the warm-up went; handed to the first job's result once."""

    ran: bool = False
    ok: bool = True
    duration_ms: float | None = None
    error: str | None = None
    _pending: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_to_first_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """The first result after a warm-up gets `timings.warmup_ms` (and `warmup_error` if it failed)."""
        with self._lock:
            if not self.ran or not self._pending:
                return result
            self._pending = False
        timings = result.setdefault("timings", {})
        if isinstance(timings, dict):
            timings["warmup_ms"] = self.duration_ms
        if self.error:
            result["warmup_error"] = self.error
        return result


def load_warmup(raw: str) -> dict[str, Any]:
    """WARMUP_WORKFLOW as a job input: inline JSON when it starts with `{`, else a file path."""
    text = raw.strip()
    source = "WARMUP_WORKFLOW"
    if not text.startswith("{"):
        path = Path(text)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WarmupError(f"WARMUP_WORKFLOW: cannot read the file {path}: {exc.strerror or exc}") from None
        source = f"WARMUP_WORKFLOW file {path}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WarmupError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise WarmupError(f"{source} must be a JSON object: a workflow in API format, or a job input with `workflow`")
    return value if "workflow" in value else {"workflow": value}


def run_warmup(runtime: WorkerRuntime, raw: str | None) -> WarmupReport:
    """Run WARMUP_WORKFLOW once (waiting for ComfyUI first); never raises."""
    if not raw:
        return WarmupReport()
    started = time.monotonic()
    report = WarmupReport(ran=True)
    try:
        job_input = load_warmup(raw)
        log.info("warm-up: running WARMUP_WORKFLOW before taking jobs")
        result = run_job(runtime, job_input, WARMUP_JOB_ID, discard_outputs=True)
        if "error" in result:
            report.error = f"{result.get('error_type', 'error')}: {result['error']}"
    except WarmupError as exc:
        report.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - the worker keeps going; the report says what happened
        log.exception("warm-up failed unexpectedly")
        report.error = f"internal worker error: {type(exc).__name__}: {exc}"
    report.ok = report.error is None
    report.duration_ms = round((time.monotonic() - started) * 1000, 1)
    if report.ok:
        log.info("warm-up finished in %.1f s", report.duration_ms / 1000)
    else:
        log.error("warm-up failed after %.1f s: %s", report.duration_ms / 1000, report.error)
    return report
