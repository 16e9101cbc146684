"""A job's models, fetched before its workflow runs: progress, timings, and a lease to the end.

The lease names every file the job lists in `models`, and every cached file its workflow
names in an input (so a job that uses a cached LoRA without listing it still keeps it from
eviction, and marks it used). It is released when the job ends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from comfy.media.settings import MediaSettings
from comfy.models.cache import FetchOutcome, Lease, ModelCache, unavailable
from comfy.models.request import ModelRequest
from comfy.models.settings import ModelSettings

log = logging.getLogger("comfy.models.fetch")


@dataclass
class JobModels:
    """The models one job holds until it ends."""

    lease: Lease | None = None
    outcomes: list[FetchOutcome] = field(default_factory=list)
    fetch_ms: float = 0.0

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def summary(self) -> list[dict[str, Any]]:
        """For the job's result: each model, its size, and where it came from (cache, download, other_worker)."""
        return [{"model": o.key, "sha256": o.sha256, "size_bytes": o.size_bytes, "source": o.source,
                 "fetch_ms": o.fetch_ms} for o in self.outcomes]


class _ModelProgress:
    """'downloading model X' updates for RunPod's /status, at most one per interval."""

    def __init__(self, send: Callable[[dict[str, Any]], None], interval_s: float) -> None:
        self._send = send
        self._interval_s = interval_s
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, key: str, done: int, total: int | None, other_worker: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if done and now - self._last < self._interval_s and not (total and done >= total):
                return
            self._last = now
        status = f"downloading model {key}" + (" (another worker is downloading it)" if other_worker else "")
        update: dict[str, Any] = {"status": status, "model": key, "bytes_done": done, "bytes_total": total}
        if total:
            update["percent"] = round(100.0 * done / total, 1)
        self._send(update)


def fetch_job_models(
    requests: list[ModelRequest], workflow: dict[str, Any], cache_root: Path, media: MediaSettings,
    cancel: threading.Event | None = None, send_progress: Callable[[dict[str, Any]], None] | None = None,
    progress_interval_s: float = 0.5,
) -> JobModels:
    """Make every requested model present and checked; raise a JobError naming the one that failed."""
    if not requests and not (cache_root / ".comfy-worker").is_dir():
        return JobModels()  # no models asked for, and no cache a workflow could name files in
    started = time.monotonic()
    settings = ModelSettings.from_env()
    cache = ModelCache(cache_root, settings.cache_max_bytes)
    try:
        named = cache.cached_keys_named_in(workflow)
        models = JobModels(lease=cache.lease(named))
        for key in named:
            cache.touch(key)
    except OSError as exc:
        if requests:
            raise unavailable(cache_root, exc) from None
        # only the protection of cached files the workflow names: the job itself needs nothing from the cache
        log.warning("model cache %s: cannot lease the files this workflow names: %s", cache_root, exc)
        return JobModels()
    progress = _ModelProgress(send_progress, progress_interval_s) if send_progress else None
    try:
        for request in requests:
            if progress is not None:
                progress(request.key, 0, None, False)
            models.outcomes.append(cache.ensure(request, models.lease, media, settings.hf_token, cancel, progress))
    except OSError as exc:
        models.release()
        raise unavailable(cache_root, exc) from None
    except BaseException:
        models.release()
        raise
    models.fetch_ms = round((time.monotonic() - started) * 1000, 1)
    return models
