"""Local runs (`python handler.py`, ./scripts/run-local.sh): show the files, not base64.

RunPod's SDK runs one job from --test_input or test_input.json when started off the platform,
logs the result cut to 4 KB of base64 and exits. For such a run the worker also writes every
output to LOCAL_OUTPUT_DIR/<job id>/ (default ./outputs/), draws a progress bar from ComfyUI's
node progress while the workflow runs in a terminal, and prints a short summary: each output's
name, kind, size, where it went and where it was written, and the job's timings.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, TextIO

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from comfy.settings import WorkerSettings


def is_local_one_job_run(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """The SDK's rule for its one-job local mode: --test_input given or no job-take URL, and no API server."""
    args = list(argv[1:])
    if "--rp_serve_api" in args or env.get("RUNPOD_REALTIME_PORT", "0") not in ("", "0"):
        return False
    return any(arg == "--test_input" or arg.startswith("--test_input=") for arg in args) \
        or not env.get("RUNPOD_WEBHOOK_GET_JOB")


class LocalRun:
    """Runs a job for a person at a terminal: files saved, a progress bar, a summary."""

    def __init__(self, output_dir: Path, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.output_dir = output_dir
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._bar: Any = None
        self._bar_node: str | None = None

    @classmethod
    def for_process(cls, settings: WorkerSettings, argv: Sequence[str], env: Mapping[str, str]) -> "LocalRun | None":
        return cls(settings.local_output_dir) if is_local_one_job_run(argv, env) else None

    def save_dir(self, job_id: str) -> Path:
        return self.output_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:100] or "job")

    def run_job(self, runtime: WorkerRuntime, raw_input: Any, job_id: str,
                send_progress: Callable[[dict[str, Any]], None] | None = None, cancel: Any = None) -> dict[str, Any]:
        """comfy.job.run.run_job with the outputs written to save_dir(job_id), a bar and a summary."""
        show_bar = send_progress is None and self.err.isatty()
        try:
            if show_bar:
                from tqdm.contrib.logging import logging_redirect_tqdm  # log lines print above the bar

                with logging_redirect_tqdm():
                    result = run_job(runtime, raw_input, job_id, self.progress, cancel, save_dir=self.save_dir(job_id))
            else:
                result = run_job(runtime, raw_input, job_id, send_progress, cancel, save_dir=self.save_dir(job_id))
        finally:
            self._close_bar()
        self.print_summary(result, job_id)
        return result

    def progress(self, progress: dict[str, Any]) -> None:
        """One of comfy.server.progress's updates: {node, class_type, value, max, nodes_done, nodes_total}."""
        from tqdm import tqdm

        node = str(progress.get("node"))
        total = max(int(progress.get("max") or 0), 1)
        if self._bar is None or node != self._bar_node:
            self._close_bar()
            self._bar = tqdm(total=total, file=self.err, leave=False, dynamic_ncols=True,
                             bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} {postfix}")
            self._bar_node = node
        self._bar.set_description_str(f"node {node} {progress.get('class_type') or ''}".rstrip(), refresh=False)
        self._bar.set_postfix_str(f"[{progress.get('nodes_done', 0)}/{progress.get('nodes_total', 0)} nodes]",
                                  refresh=False)
        self._bar.total = total
        self._bar.n = min(int(progress.get("value") or 0), total)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_node = None

    def print_summary(self, result: dict[str, Any], job_id: str) -> None:
        print(summarize(result, job_id, self.save_dir(job_id)), file=self.out, flush=True)


def summarize(result: dict[str, Any], job_id: str, saved_dir: Path) -> str:
    """The summary a person reads after a local run."""
    lines: list[str] = []
    if "error" in result:
        lines.append(f"job {job_id} FAILED ({result.get('error_type', 'error')}): {result['error']}")
        if result.get("details") is not None:
            details = json.dumps(result["details"], ensure_ascii=False)
            lines.append(f"  details: {details[:1500]}{'...' if len(details) > 1500 else ''}")
        if saved_dir.is_dir() and any(saved_dir.iterdir()):
            lines.append(f"  outputs written to {saved_dir}/")
        return "\n".join(lines)
    outputs = [entry for entry in result.get("outputs") or [] if isinstance(entry, dict)]
    lines.append(f"job {job_id}: {len(outputs)} output{'s' if len(outputs) != 1 else ''}")
    rows = [("output", "kind", "size", "delivery", "written to")]
    for entry in outputs:
        name = entry.get("filename") or f"node {entry.get('node_id')} {entry.get('key')}"
        where = entry.get("delivery", "inline")
        if entry.get("url"):
            where += f" ({entry.get('storage_path')})"
        rows.append((name, str(entry.get("kind", "")), human_size(entry.get("size_bytes")), where,
                     entry.get("saved_to") or "-"))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for entry in outputs:
        if entry.get("kind") == "text" and isinstance(entry.get("text"), str):
            preview = entry["text"].replace("\n", " ")
            lines.append(f"  text of node {entry.get('node_id')}: {preview[:120]!r}{'...' if len(preview) > 120 else ''}")
    timings = result.get("timings") or {}
    if timings:
        lines.append("  timings: " + ", ".join(f"{name.removesuffix('_ms')} {value:.0f} ms"
                                               for name, value in timings.items() if isinstance(value, (int, float))))
    delivery = result.get("delivery") or {}
    if delivery.get("storage"):
        lines.append(f"  {delivery.get('stored_files', 0)} in {delivery['storage']}, {delivery.get('inline_files', 0)} "
                     f"inline (RESULT_MAX_BYTES {delivery.get('result_max_bytes')})")
    return "\n".join(lines)


def human_size(size: Any) -> str:
    if not isinstance(size, int):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
