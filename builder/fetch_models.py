#!/usr/bin/env python3
"""Download model files listed in a manifest into ComfyUI's models folder, verified by sha256.

    builder/fetch_models.py --manifest builder/models.txt --models-dir /comfyui/models \
        [--token-file /run/secrets/hf_token] [--token-hosts huggingface.co,civitai.com]
        [--attempts 3] [--retry-wait 5] [--check]

The manifest has one file per line: ``<url> <folder> <sha256> [file name]``; blank lines and
``#`` comments are ignored. ``folder`` is one of ComfyUI's model folders (checkpoints, loras,
vae, diffusion_models, ...), optionally with a subfolder (``loras/styles``). The file name
defaults to the last part of the URL's path.

The whole manifest is checked before anything is downloaded, and every problem is reported at
once. Each file is streamed to a temporary name beside its target while its sha256 is computed,
and renamed into place only when the hash matches: a mismatch fails with both hashes and keeps
nothing. A file already in place with the right hash is not downloaded again; one with another
hash is an error (it is never overwritten). Transient failures (no connection, a stalled or
cut transfer, HTTP 5xx or 429) are retried from the start, ``--attempts`` times in all; a
complete download with another hash is not retried.

Gated downloads: the token is read from ``--token-file`` (a Docker build secret, so it never
lands in a layer) or the ``HF_TOKEN`` environment variable, and sent as ``Authorization:
Bearer`` only to the hosts in ``--token-hosts`` (and their subdomains), never along redirects.

Standard library only (with comfy/models/files.py, ComfyUI's folder names, shared with the
worker): it runs in the image before anything else is installed. Exit status:
0 done, 1 a download or a hash failed, 2 the manifest or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

# ComfyUI's model folders are shared with the worker's model cache: comfy/models/files.py,
# standard library only, beside builder/ here and in the image.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from comfy.models.files import MODEL_FOLDERS, bad_relative as _bad_relative, file_sha256, valid_folder  # noqa: E402

SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
READ_TIMEOUT_S = 60  # longest silence while connecting or reading
DEFAULT_TOKEN_HOSTS = "huggingface.co,civitai.com"


class ManifestError(ValueError):
    """The manifest cannot be used; the message names every bad line."""


class FetchError(RuntimeError):
    """A file could not be fetched or did not match its hash; the message names it."""


@dataclass(frozen=True)
class ModelFile:
    url: str
    folder: str
    sha256: str
    filename: str
    line: int

    @property
    def relative_path(self) -> PurePosixPath:
        return PurePosixPath(self.folder) / self.filename


def parse_manifest(text: str, source: str = "models.txt") -> list[ModelFile]:
    """Parse the manifest; every problem is collected and raised at once as ManifestError."""
    files: list[ModelFile] = []
    problems: list[str] = []
    seen: dict[PurePosixPath, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        fields = line.split()
        if len(fields) not in (3, 4):
            problems.append(f"{where}: expected '<url> <folder> <sha256> [file name]', got {line!r}")
            continue
        url, folder, digest = fields[0], fields[1].strip("/"), fields[2].lower()
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("https", "http", "file"):
            problems.append(f"{where}: {url!r} is not an https://, http:// or file:// URL")
            continue
        if not valid_folder(folder):
            problems.append(
                f"{where}: unknown model folder {fields[1]!r}; use one of ComfyUI's: "
                + ", ".join(sorted(MODEL_FOLDERS))
            )
            continue
        if not SHA256.match(digest):
            problems.append(f"{where}: {fields[2]!r} is not a sha256 (64 hex characters)")
            continue
        filename = fields[3] if len(fields) == 4 else urllib.parse.unquote(
            PurePosixPath(urllib.parse.urlsplit(url).path).name)
        if not filename or "/" in filename or _bad_relative(filename):
            problems.append(f"{where}: cannot use {filename!r} as a file name; give one as the fourth field")
            continue
        entry = ModelFile(url=url, folder=folder, sha256=digest, filename=filename, line=number)
        if entry.relative_path in seen:
            problems.append(
                f"{where}: duplicate entry for {entry.relative_path} (already on line {seen[entry.relative_path]})")
            continue
        seen[entry.relative_path] = number
        files.append(entry)
    if problems:
        raise ManifestError("\n".join(problems))
    return files


def _host_matches(host: str, token_hosts: list[str]) -> bool:
    host = host.lower()
    return any(host == allowed or host.endswith("." + allowed) for allowed in token_hosts)


class _TransientError(FetchError):
    """A failure worth another attempt: no connection, a cut or stalled transfer, HTTP 5xx or 429."""


def _download(request: urllib.request.Request, out: BinaryIO, label: str) -> tuple[str, int]:
    """Stream the response into out (from its start); return (sha256, size)."""
    out.seek(0)
    out.truncate()
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=READ_TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        # urllib ends a body cut short without an error: compare with what was announced.
        if expected is not None and expected.isdigit() and size < int(expected):
            raise _TransientError(f"{label}: download failed: the connection ended after {size} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        message = f"{label}: download failed: HTTP {exc.code} {exc.reason}"
        if exc.code in (401, 403):
            raise FetchError(message + " (a gated file? pass a token with --token-file)") from None
        if exc.code == 429 or exc.code >= 500:
            raise _TransientError(message) from None
        raise FetchError(message) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # a file:// URL that is not there
            raise FetchError(f"{label}: download failed: {exc.reason}") from None
        raise _TransientError(f"{label}: download failed: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, a body cut short
        raise _TransientError(f"{label}: download failed: {exc!r}") from None
    return digest.hexdigest(), size


def fetch(entry: ModelFile, models_dir: Path, token: str | None, token_hosts: list[str],
          attempts: int = 3, retry_wait_s: float = 5.0) -> bool:
    """Download entry into models_dir and verify it; False when it was already in place.

    Transient failures are retried (attempts in all, the wait doubling each time); a file that
    downloads completely but has another sha256 is not: the manifest or the source is wrong.
    """
    target = models_dir / entry.folder / entry.filename
    label = f"{entry.relative_path} (line {entry.line}, {entry.url})"
    if target.exists():
        found = file_sha256(target)
        if found == entry.sha256:
            return False
        raise FetchError(f"{label}: {target} already exists with sha256 {found}, "
                         f"not {entry.sha256}; remove it to download again")
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(entry.url, headers={"User-Agent": "comfy-worker-builder"})
    host = urllib.parse.urlsplit(entry.url).hostname or ""
    if token and _host_matches(host, token_hosts):
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    handle, temp_name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(handle, "w+b") as out:
            for attempt in range(1, attempts + 1):
                try:
                    got, size = _download(request, out, label)
                    break
                except _TransientError as exc:
                    if attempt == attempts:
                        raise FetchError(f"{exc} (after {attempts} attempts)") from None
                    wait = retry_wait_s * 2 ** (attempt - 1)
                    print(f"fetch_models: {exc}; attempt {attempt + 1} of {attempts} in {wait:g} s", file=sys.stderr)
                    time.sleep(wait)
        if got != entry.sha256:
            raise FetchError(f"{label}: sha256 mismatch: the manifest says {entry.sha256}, "
                             f"the download ({size} bytes) is {got}; nothing was kept")
        os.replace(temp_name, target)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return True


def _read_token(token_file: Path | None) -> str | None:
    if token_file is not None and token_file.is_file():
        return token_file.read_text(encoding="utf-8").strip() or None
    return os.environ.get("HF_TOKEN") or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path, help="model manifest (builder/models.txt)")
    parser.add_argument("--models-dir", required=True, type=Path, help="ComfyUI's models folder")
    parser.add_argument("--token-file", type=Path, help="file holding a token for gated downloads (a build secret)")
    parser.add_argument("--token-hosts", default=DEFAULT_TOKEN_HOSTS,
                        help=f"comma-separated hosts the token is sent to (default {DEFAULT_TOKEN_HOSTS})")
    parser.add_argument("--attempts", type=int, default=3,
                        help="tries per file on transient failures (no connection, cut transfer, HTTP 5xx/429)")
    parser.add_argument("--retry-wait", type=float, default=5.0, help="seconds before the second try; doubles after")
    parser.add_argument("--check", action="store_true", help="only parse the manifest and print it")
    args = parser.parse_args(argv)
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")

    if not args.manifest.is_file():
        print(f"fetch_models: the manifest {args.manifest} does not exist", file=sys.stderr)
        return 2
    try:
        entries = parse_manifest(args.manifest.read_text(encoding="utf-8"), source=str(args.manifest))
    except ManifestError as exc:
        print(f"fetch_models: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for entry in entries:
            print(f"{entry.relative_path} {entry.sha256} {entry.url}")
        return 0
    if not args.models_dir.is_dir():
        print(f"fetch_models: the models folder {args.models_dir} does not exist "
              "(it should be ComfyUI's models/ folder)", file=sys.stderr)
        return 2
    token = _read_token(args.token_file)
    token_hosts = [host.strip().lower() for host in args.token_hosts.split(",") if host.strip()]
    try:
        for entry in entries:
            fetched = fetch(entry, args.models_dir, token, token_hosts, args.attempts, args.retry_wait)
            print(f"fetch_models: {entry.relative_path} {'downloaded and verified' if fetched else 'already there'}")
    except FetchError as exc:
        print(f"fetch_models: {exc}", file=sys.stderr)
        return 1
    print(f"fetch_models: {len(entries)} file(s) in {args.models_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
