"""Run a worker (ours or worker-comfyui) with a timeline of its job path; for bench/bench_sdk_timeline.py.

    TIMELINE_FILE=out.jsonl TIMELINE_WORKER=ours python bench/sdk_timeline.py [--rp_serve_api ...]

Measurement only, never part of the product: before the worker's own entry runs, this wraps the
RunPod SDK's steps (job-take, the queue hand-off, the handler call, json.dumps of the result, the
job-done POST, /runsync) and the worker's stages in place, each wrapper writing one JSON line per
start and end: monotonic time (comparable across processes on one machine), thread, event, and the
process's RSS and the peak since the previous line (VmHWM, reset at every line through
/proc/self/clear_refs), minor page faults and CPU time. Garbage-collector pauses are lines too.
With TIMELINE_TRACEMALLOC=1 each line also has the bytes Python holds (tracemalloc) and their peak
since the previous line: RSS shows pages the process took from the system, which a heap that keeps
freed pages hides; tracemalloc shows what is alive. It slows every allocation, so times from such a
run are not used.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import os
import resource
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
_OUT = open(os.environ["TIMELINE_FILE"], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
_LOCK = threading.RLock()
_INSIDE = threading.local()  # a collection that starts while a line is written writes none


_STATUS = os.open("/proc/self/status", os.O_RDONLY)
_CLEAR_REFS = os.open("/proc/self/clear_refs", os.O_WRONLY)


def _status_kib(status: bytes, key: bytes) -> int:
    at = status.index(key) + len(key)
    return int(status[at:status.index(b"kB", at)])


def mark(event: str, job: str = "") -> None:
    """One timeline line: `event` now, with memory since the last line."""
    if getattr(_INSIDE, "busy", False):
        return
    _INSIDE.busy = True
    try:
        with _LOCK:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            status = os.pread(_STATUS, 8192, 0)
            os.write(_CLEAR_REFS, b"5")  # the next line's peak is the peak since this one
            line = {
                "t": time.monotonic(), "wall": time.time(), "thread": threading.current_thread().name,
                "event": event, "job": job, "rss_kib": _status_kib(status, b"VmRSS:"),
                "peak_kib": _status_kib(status, b"VmHWM:"), "minflt": usage.ru_minflt,
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
            if tracemalloc.is_tracing():
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                line.update(py_kib=current // 1024, py_peak_kib=peak // 1024)
            _OUT.write(json.dumps(line) + "\n")
    finally:
        _INSIDE.busy = False


def wrap(owner: Any, name: str, label: str, job_of: Callable[..., str] | None = None) -> None:
    """Replace owner.name by a wrapper that marks `label>` before and `label<` after each call."""
    fn = getattr(owner, name)

    def job(args: tuple, kwargs: dict) -> str:
        return job_of(*args, **kwargs) if job_of else ""

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            mark(f"{label}>", job(args, kwargs))
            try:
                return await fn(*args, **kwargs)
            finally:
                mark(f"{label}<")
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            mark(f"{label}>", job(args, kwargs))
            try:
                return fn(*args, **kwargs)
            finally:
                mark(f"{label}<")
    setattr(owner, name, wrapper)


def _gc_pause(phase: str, info: dict[str, Any]) -> None:
    if info.get("generation", 0) >= 1:  # young collections are frequent and short
        mark(f"gc{info['generation']}{'>' if phase == 'start' else '<'}")


def instrument_sdk() -> None:
    import runpod
    from runpod.serverless.modules import rp_fastapi, rp_http, rp_job, rp_scale

    original_get_job = rp_scale.get_job

    async def get_job(session, num_jobs=1):  # noqa: ANN001
        jobs = await original_get_job(session, num_jobs)
        if jobs:
            mark("sdk.job_received", jobs[0]["id"])
        return jobs

    rp_scale.get_job = get_job
    wrap(rp_job, "run_job", "sdk.run_job", lambda handler, job: job["id"])
    rp_fastapi.run_job = rp_job.run_job
    wrap(rp_job, "send_result", "sdk.send_result", lambda session, data, job, **_: job["id"])
    wrap(rp_http, "_transmit", "sdk.post", lambda session, url, data: "progress" if '"IN_PROGRESS"' in data[:200] else "")
    wrap(rp_fastapi.WorkerAPI, "_sim_runsync", "sdk.runsync")
    wrap(rp_fastapi, "jsonable_encoder", "sdk.jsonable_encoder")
    import fastapi.routing
    wrap(fastapi.routing, "serialize_response", "sdk.serialize_response")  # /runsync's answer, after _sim_runsync

    class TimedJson:  # rp_http's json module, with dumps timed
        def __getattr__(self, name: str) -> Any:
            return getattr(json, name)

        @staticmethod
        def dumps(*args: Any, **kwargs: Any) -> str:
            mark("sdk.json_dumps>")
            try:
                return json.dumps(*args, **kwargs)
            finally:
                mark("sdk.json_dumps<")

    rp_http.json = TimedJson()
    start = runpod.serverless.start

    def timed_start(config: dict[str, Any]) -> None:
        handler = config["handler"]
        if inspect.iscoroutinefunction(handler):
            async def timed(job):  # noqa: ANN001
                mark("handler>", str(job["id"]))
                try:
                    return await handler(job)
                finally:
                    mark("handler<", str(job["id"]))
        else:
            def timed(job):  # noqa: ANN001
                mark("handler>", str(job["id"]))
                try:
                    return handler(job)
                finally:
                    mark("handler<", str(job["id"]))
        return start({**config, "handler": timed})

    runpod.serverless.start = timed_start


def run_ours() -> None:
    sys.path.insert(0, str(ROOT))
    import comfy.job.run as run
    import comfy.job.stages as stages
    from comfy.delivery.deliver import DeliveryPlan
    from comfy.server.client import ComfyClient
    from comfy.server.monitor import PromptMonitor
    from comfy.worker.runpod_progress import RunPodProgress

    for name in ("run_job", "parse_job_input"):
        wrap(run, name, f"ours.{name}")
    for name in ("plan_delivery", "fetch_job_models", "stage_inputs", "validate_graph", "collect_outputs",
                 "_remove_prompt_files", "_free_memory"):
        wrap(stages, name, f"ours.{name}")
    for name in ("prepare", "execute", "deliver"):
        wrap(stages.JobRun, name, f"ours.stage_{name}")
    wrap(stages.FolderSnapshot, "take", "ours.snapshot")
    wrap(DeliveryPlan, "deliver", "ours.deliver")
    wrap(ComfyClient, "queue_prompt", "ours.queue_prompt")
    wrap(ComfyClient, "history", "ours.history")
    wrap(ComfyClient, "system_stats", "ours.probe")
    wrap(ComfyClient, "queue", "ours.probe")
    wrap(ComfyClient, "probe", "ours.probe")
    wrap(PromptMonitor, "wait", "ours.monitor_wait")
    wrap(RunPodProgress, "_post", "ours.progress_post")
    os.chdir(ROOT)
    runpy.run_path(str(ROOT / "handler.py"), run_name="__main__")


def run_worker_comfyui() -> None:
    sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "src")]
    import handler as theirs  # worker-comfyui's handler.py (the current folder is its checkout)
    import runpod

    theirs.COMFY_HOST = os.environ["BENCH_COMFY_HOST"]
    for name in ("validate_input", "check_server", "upload_images", "queue_workflow", "get_history", "get_image_data"):
        wrap(theirs, name, f"theirs.{name}")
    runpod.serverless.start({"handler": theirs.handler})


if __name__ == "__main__":
    if os.environ.get("TIMELINE_TRACEMALLOC") == "1":
        tracemalloc.start()
    gc.callbacks.append(_gc_pause)
    instrument_sdk()
    run_ours() if os.environ["TIMELINE_WORKER"] == "ours" else run_worker_comfyui()
