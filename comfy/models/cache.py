"""The model cache: each file downloaded once into a folder that several workers share.

Layout under the cache root (MODEL_CACHE_DIR, on the network volume when one is mounted):

    <folder>/<name>                          the files, where ComfyUI looks (extra_model_paths)
    .comfy-worker/entries/<folder>/<name>.json  sha256, size, URL of each file; its mtime is the last use
    .comfy-worker/locks/<id>.lock             one downloader per file (comfy/volume_lock.py)
    .comfy-worker/leases/<token>.json         the files a running job uses (never evicted)
    .comfy-worker/tmp/<id>/<token>/           downloads in progress

A file appears under its name only by an atomic rename, after its sha256 was checked, so
no job (on any worker) ever sees half a file. Workers that want the same file at once
wait for the one holding its lock; a holder that died is taken over (see VolumeLock).
Under a byte cap (MODEL_CACHE_MAX_BYTES) the least recently used files go first, never
one that a live lease names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from comfy.errors import JobError
from comfy.media.downloads import DownloadCancelled, DownloadFailed, InputTooLarge, download_to_file
from comfy.media.settings import MediaSettings
from comfy.media.url_safety import UnsafeURL
from comfy.models.files import MODEL_EXTENSIONS, file_sha256
from comfy.models.request import ModelRequest
from comfy.volume_lock import Heartbeat, LockWaitCancelled, LockWaitTimeout, Owner, VolumeLock

log = logging.getLogger("comfy.models.cache")

STATE_DIR = ".comfy-worker"
LEASE_REFRESH_S = 30.0
LEASE_STALE_S = 600.0  # a lease not refreshed for this long belongs to a dead worker
NO_CAP_BYTES = 1 << 62  # what the download limit is without MODEL_CACHE_MAX_BYTES

Progress = Callable[[str, int, "int | None", bool], None]  # (key, bytes done, total, another worker has it)


class ModelFetchFailed(JobError):
    """A model could not be downloaded; the message names the model, the host and the status."""

    error_type = "model_download"


class ModelURLRefused(ModelFetchFailed):
    """A model URL resolves to a private, loopback or metadata address (ALLOW_PRIVATE_URLS allows it)."""

    error_type = "model_url_refused"


class ModelHashMismatch(JobError):
    """A downloaded model's sha256 is not the one the job gave; nothing was kept."""

    error_type = "model_sha256_mismatch"


class ModelCacheFull(JobError):
    """The model does not fit under MODEL_CACHE_MAX_BYTES without evicting files in use."""

    error_type = "model_cache_full"


class ModelCacheUnavailable(JobError):
    """The cache folder cannot be written (a full or read-only volume)."""

    error_type = "model_cache_unavailable"


class ModelConflict(JobError):
    """Another file is already cached under that name and cannot be replaced now."""

    error_type = "model_conflict"


@dataclass(frozen=True)
class CacheEntry:
    """A file the cache downloaded and checked."""

    key: str  # folder/name
    sha256: str
    size_bytes: int
    url: str
    last_used: float  # the entry file's mtime


@dataclass(frozen=True)
class FetchOutcome:
    """How one model got onto the volume for this job."""

    key: str
    sha256: str
    size_bytes: int
    source: str  # "cache" (already there), "download" (this worker), "other_worker" (waited for it)
    fetch_ms: float


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class Lease:
    """The files one running job uses: a file other workers read before evicting anything."""

    def __init__(self, cache: "ModelCache", keys: Iterable[str]) -> None:
        self.keys: set[str] = set()
        self.owner = Owner.me()
        self.path = cache.state / "leases" / f"{self.owner.token}.json"
        self._refresh_s = cache.lease_refresh_s
        self._heartbeat: Heartbeat | None = None
        for key in keys:
            self.add(key)

    def _write(self) -> None:
        scratch = self.path.with_name(f".{self.path.name}.new")
        scratch.write_text(json.dumps({"owner": json.loads(self.owner.to_json()), "models": sorted(self.keys)}))
        os.replace(scratch, self.path)

    def add(self, key: str) -> None:
        """Name one more file; written before the job looks for it, so no evictor can miss it."""
        if key in self.keys:
            return
        self.keys.add(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self._refresh_s, self._beat, "model-lease")

    def _beat(self) -> bool:
        os.utime(self.path)
        return True

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.path.unlink(missing_ok=True)


class ModelCache:
    """Files under `root`, fetched on demand, shared by every worker that mounts it."""

    def __init__(self, root: Path, max_bytes: int | None = None, lock_stale_s: float | None = None,
                 lease_stale_s: float = LEASE_STALE_S, lease_refresh_s: float = LEASE_REFRESH_S) -> None:
        self.root = root
        self.state = root / STATE_DIR
        self.max_bytes = max_bytes
        self.lock_stale_s = lock_stale_s
        self.lease_stale_s = lease_stale_s
        self.lease_refresh_s = lease_refresh_s

    # -- paths and records ----------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        return self.root / key

    def _entry_path(self, key: str) -> Path:
        return self.state / "entries" / f"{key}.json"

    def _lock(self, name: str) -> VolumeLock:
        lock = VolumeLock(self.state / "locks" / f"{name}.lock")
        if self.lock_stale_s is not None:
            lock.stale_s = self.lock_stale_s
        return lock

    def entry(self, key: str) -> CacheEntry | None:
        path = self._entry_path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return CacheEntry(key, str(data["sha256"]), int(data["size_bytes"]), str(data["url"]), path.stat().st_mtime)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def entries(self) -> list[CacheEntry]:
        base = self.state / "entries"
        found = []
        for path in base.rglob("*.json") if base.is_dir() else ():
            entry = self.entry(path.relative_to(base).as_posix()[: -len(".json")])
            if entry is not None:
                found.append(entry)
        return found

    def _write_entry(self, key: str, sha256: str, size: int, url: str) -> None:
        path = self._entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
        scratch.write_text(json.dumps({"sha256": sha256, "size_bytes": size, "url": url, "fetched_at": time.time()}))
        os.replace(scratch, path)

    def _is_hit(self, request: ModelRequest) -> CacheEntry | None:
        entry = self.entry(request.key)
        if entry is None or entry.sha256 != request.sha256:
            return None
        try:
            if self.path_of(request.key).stat().st_size != entry.size_bytes:
                return None
        except OSError:
            return None
        return entry

    def touch(self, key: str) -> None:
        """Mark a file used now (the LRU order)."""
        try:
            os.utime(self._entry_path(key))
        except OSError:
            pass

    # -- leases ---------------------------------------------------------------------------

    def lease(self, keys: Iterable[str] = ()) -> Lease:
        return Lease(self, keys)

    def keys_in_use(self, besides: Lease | None = None) -> set[str]:
        """Every file a live lease (other than `besides`) names; leases of dead workers are removed on the way."""
        in_use: set[str] = set()
        folder = self.state / "leases"
        if not folder.is_dir():
            return in_use
        now = time.time()
        for path in folder.glob("*.json"):
            if besides is not None and path == besides.path:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                age = now - path.stat().st_mtime
                owner = Owner(**data["owner"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or gone: a lease is never judged from half a file
            if owner.dead_here() or age > self.lease_stale_s:
                log.info("removing the lease of %s (%s)", owner.describe(),
                         "gone" if owner.dead_here() else f"not refreshed for {age:.0f} s")
                path.unlink(missing_ok=True)
                continue
            in_use.update(str(key) for key in data.get("models", []))
        return in_use

    def cached_keys_named_in(self, workflow: dict) -> set[str]:
        """Cached files a workflow names in its inputs (`loras/x.safetensors` is `x.safetensors` in a LoraLoader)."""
        names = {
            value for node in workflow.values() if isinstance(node, dict)
            for value in (node.get("inputs") or {}).values()
            if isinstance(value, str) and 0 < len(value) < 300 and os.path.splitext(value)[1].lower() in MODEL_EXTENSIONS
            and not value.startswith("/")
        }
        base = self.state / "entries"
        if not names or not base.is_dir():
            return set()  # the common case costs no look at the volume
        found = set()
        for folder, _subfolders, _files in os.walk(base):
            relative = Path(folder).relative_to(base).as_posix()
            for name in names:
                if relative != "." and (Path(folder) / f"{name}.json").is_file():
                    found.add(f"{relative}/{name}")
        return found

    # -- fetching -------------------------------------------------------------------------

    def ensure(self, request: ModelRequest, lease: Lease, media: MediaSettings, hf_token: str | None = None,
               cancel: threading.Event | None = None, progress: Progress | None = None) -> FetchOutcome:
        """Make request's file present and checked under its key; download it if no worker has."""
        started = time.monotonic()
        cancel = cancel or threading.Event()
        lease.add(request.key)  # before looking: an evictor that reads the leases after this keeps the file

        def outcome(source: str, entry: CacheEntry) -> FetchOutcome:
            self.touch(request.key)
            return FetchOutcome(request.key, entry.sha256, entry.size_bytes, source,
                                round((time.monotonic() - started) * 1000, 1))

        if (entry := self._is_hit(request)) is not None:
            return outcome("cache", entry)
        waited = False
        for _round in range(3):  # a lock taken over from us while we downloaded: wait, then look again
            lock = self._lock(_key_id(request.key))

            def on_wait(holder: Owner | None) -> None:
                nonlocal waited
                waited = True
                log.info("model %s: waiting for %s, who is downloading it", request.key,
                         holder.describe() if holder else "another worker")
                if progress is not None:
                    progress(request.key, 0, None, True)

            try:
                # the holder's own download is bounded by DOWNLOAD_TOTAL_TIMEOUT_S; a dead one is taken over
                lock.acquire(timeout_s=media.download_total_timeout_s + 120, cancel=cancel, on_wait=on_wait)
            except LockWaitCancelled:
                raise DownloadCancelled(f"the job was cancelled while waiting for model {request.key}") from None
            except LockWaitTimeout as exc:
                raise ModelFetchFailed(f"model {request.key}: gave up waiting for another worker's download ({exc})",
                                       details={"model": request.key}) from None
            try:
                if (entry := self._is_hit(request)) is not None:
                    return outcome("other_worker" if waited else "cache", entry)
                self._clear_the_name(request, lease)
                if (entry := self._adopt(request)) is not None:
                    return outcome("cache", entry)
                done = self._download(request, lease, lock, media, hf_token, cancel, progress)
                if done is not None:
                    return outcome("download", done)
            finally:
                lock.release()
        raise ModelFetchFailed(f"model {request.key}: the download kept being taken over by other workers",
                               details={"model": request.key})

    def _clear_the_name(self, request: ModelRequest, lease: Lease) -> None:
        """Another version cached under this name: replace it, unless another job uses it now."""
        entry = self.entry(request.key)
        if entry is None or entry.sha256 == request.sha256:
            return
        if request.key in self.keys_in_use(besides=lease):
            raise ModelConflict(
                f"model {request.key} is cached with sha256 {entry.sha256} and another job is using it; "
                f"this job asks for {request.sha256}: give the file another name",
                details={"model": request.key, "cached_sha256": entry.sha256, "sha256": request.sha256})
        log.info("model %s: replacing sha256 %s with %s", request.key, entry.sha256, request.sha256)
        self.path_of(request.key).unlink(missing_ok=True)
        self._entry_path(request.key).unlink(missing_ok=True)

    def _adopt(self, request: ModelRequest) -> CacheEntry | None:
        """A file under the name with no record (a crash after the rename, or put there by hand)."""
        target = self.path_of(request.key)
        if not target.is_file() or self.entry(request.key) is not None:
            return None
        found = file_sha256(target)
        if found != request.sha256:
            raise ModelConflict(
                f"model {request.key}: {target} already exists with sha256 {found}, not {request.sha256}, and the "
                "cache did not download it; remove it or give the file another name",
                details={"model": request.key, "found_sha256": found, "sha256": request.sha256})
        size = target.stat().st_size
        self._write_entry(request.key, found, size, request.url)
        return self.entry(request.key)

    def _download(self, request: ModelRequest, lease: Lease, lock: VolumeLock, media: MediaSettings,
                  hf_token: str | None, cancel: threading.Event, progress: Progress | None) -> CacheEntry | None:
        """Download, check, make room, publish. None when another worker took the lock over meanwhile."""
        scratch_root = self.state / "tmp" / _key_id(request.key)
        if scratch_root.is_dir():  # what holders before us left (they died, or lost the lock)
            for leftover in scratch_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        scratch = scratch_root / secrets.token_hex(6)
        scratch.mkdir(parents=True, exist_ok=True)
        limit = self.max_bytes or NO_CAP_BYTES
        settings = media.model_copy(update={"max_input_bytes": limit})
        try:
            log.info("model %s: downloading from %s", request.key, _host(request.url))
            try:
                got = download_to_file(
                    request.url, scratch / "file", settings, cancel=cancel, sha256=True,
                    headers_for_host=hf_auth_headers(hf_token),
                    on_progress=(lambda done, total: progress(request.key, done, total, False)) if progress else None,
                )
            except InputTooLarge:
                raise ModelCacheFull(
                    f"model {request.key} from host {_host(request.url)} is larger than MODEL_CACHE_MAX_BYTES "
                    f"({limit} bytes)", details={"model": request.key, "limit_bytes": limit}) from None
            except (DownloadFailed, UnsafeURL) as exc:
                kind = ModelURLRefused if isinstance(exc, UnsafeURL) else ModelFetchFailed
                raise kind(f"model {request.key}: {exc.message}",
                           details={"model": request.key, **(exc.details or {})}) from None
            except OSError as exc:  # writing the file: a full or read-only volume
                raise unavailable(self.root, exc, request.key) from None
            if got.sha256 != request.sha256:
                raise ModelHashMismatch(
                    f"model {request.key}: sha256 mismatch: the job says {request.sha256}, the download "
                    f"({got.size_bytes} bytes from host {_host(request.url)}) is {got.sha256}; nothing was kept",
                    details={"model": request.key, "expected": request.sha256, "got": got.sha256,
                             "size_bytes": got.size_bytes})
            if lock.lost or not lock.still_held():
                log.warning("model %s: another worker took the download over; waiting for it", request.key)
                return None
            self.make_room(got.size_bytes, keep=lease.keys, adding=request.key)
            target = self.path_of(request.key)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_entry(request.key, got.sha256 or request.sha256, got.size_bytes, request.url)
            os.replace(got.path, target)  # the only way a file appears under its name
            log.info("model %s: %d bytes downloaded and verified", request.key, got.size_bytes)
            return self.entry(request.key)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- eviction -------------------------------------------------------------------------

    def make_room(self, new_bytes: int, keep: Iterable[str] = (), adding: str = "") -> list[str]:
        """Evict least recently used files until new_bytes more fit under the cap; return what went.

        Files in `keep` or named by a live lease stay. If they alone leave no room,
        ModelCacheFull is raised and nothing is evicted.
        """
        if self.max_bytes is None:
            return []
        if new_bytes > self.max_bytes:
            raise ModelCacheFull(
                f"model {adding} is {new_bytes} bytes, more than MODEL_CACHE_MAX_BYTES ({self.max_bytes})",
                details={"model": adding, "size_bytes": new_bytes, "limit_bytes": self.max_bytes})
        lock = self._lock("evict")
        try:
            lock.acquire(timeout_s=300)
        except LockWaitTimeout as exc:
            raise ModelCacheFull(f"model {adding}: could not make room in the cache ({exc})",
                                 details={"model": adding}) from None
        try:
            entries = [e for e in self.entries() if e.key != adding]
            in_use = self.keys_in_use() | set(keep)
            total = sum(e.size_bytes for e in entries) + new_bytes
            if total <= self.max_bytes:
                return []
            candidates = sorted((e for e in entries if e.key not in in_use), key=lambda e: e.last_used)
            if total - sum(e.size_bytes for e in candidates) > self.max_bytes:
                busy = sorted(e.key for e in entries if e.key in in_use)
                raise ModelCacheFull(
                    f"model {adding} ({new_bytes} bytes) does not fit under MODEL_CACHE_MAX_BYTES "
                    f"({self.max_bytes}): the files in use by running jobs take the room ({', '.join(busy)})",
                    details={"model": adding, "size_bytes": new_bytes, "limit_bytes": self.max_bytes, "in_use": busy})
            evicted = []
            for entry in candidates:
                if total <= self.max_bytes:
                    break
                if self._evict(entry):
                    total -= entry.size_bytes
                    evicted.append(entry.key)
            if total > self.max_bytes:
                raise ModelCacheFull(
                    f"model {adding} ({new_bytes} bytes) does not fit under MODEL_CACHE_MAX_BYTES ({self.max_bytes}): "
                    "files became busy while making room", details={"model": adding, "limit_bytes": self.max_bytes})
            return evicted
        finally:
            lock.release()

    def _evict(self, entry: CacheEntry) -> bool:
        """Remove one file unless it became busy (its download lock taken, or a lease named it meanwhile)."""
        key_lock = self._lock(_key_id(entry.key))
        if not key_lock.try_acquire():
            return False
        try:
            target = self.path_of(entry.key)
            tomb = target.with_name(f".{target.name}.{secrets.token_hex(4)}.evicted")
            try:
                os.rename(target, tomb)  # gone for new readers at once
            except FileNotFoundError:
                tomb = None
            if entry.key in self.keys_in_use():  # a job leased it between our two looks: put it back
                if tomb is not None:
                    try:
                        os.link(tomb, target)
                    except OSError:
                        pass
                    tomb.unlink(missing_ok=True)
                return False
            if tomb is not None:
                tomb.unlink(missing_ok=True)
            self._entry_path(entry.key).unlink(missing_ok=True)
            log.info("model %s: evicted (%d bytes, last used %.0f s ago)", entry.key, entry.size_bytes,
                     time.time() - entry.last_used)
            return True
        finally:
            key_lock.release()


def unavailable(root: Path, exc: OSError, key: str = "") -> ModelCacheUnavailable:
    what = f"model {key}: " if key else ""
    return ModelCacheUnavailable(f"{what}cannot write into the model cache {root} (MODEL_CACHE_DIR): "
                                 f"{exc.strerror or exc}", details={"model": key} if key else None)


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


HF_HOSTS = frozenset({"huggingface.co", "hf.co"})


def hf_auth_headers(token: str | None) -> Callable[[str], dict[str, str]] | None:
    """The token goes to Hugging Face's own hosts only, never along a redirect to its CDN or elsewhere."""
    if not token:
        return None
    return lambda host: {"Authorization": f"Bearer {token}"} if host.lower() in HF_HOSTS else {}
