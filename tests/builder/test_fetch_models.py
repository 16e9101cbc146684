"""builder/fetch_models.py against file:// URLs and a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.fetch_models import ManifestError, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "builder" / "fetch_models.py"
CONTENT = b"not really a model, but bytes all the same\n" * 1000
GOOD = hashlib.sha256(CONTENT).hexdigest()
BAD = hashlib.sha256(b"something else").hexdigest()


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny model.safetensors"  # a space: the URL carries %20
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.txt"
    path.write_text(text)
    return path


# --- parsing ---------------------------------------------------------------------------

def test_manifest_parses_folder_subfolder_and_file_names():
    entries = parse_manifest(
        "# comment\n"
        f"https://huggingface.co/o/r/resolve/abc/model%20v1.safetensors checkpoints {GOOD}\n"
        f"file:///x/y.bin loras/styles/ {GOOD.upper()} renamed.safetensors\n"
    )
    assert [(str(e.relative_path), e.sha256, e.line) for e in entries] == [
        ("checkpoints/model v1.safetensors", GOOD, 2), ("loras/styles/renamed.safetensors", GOOD, 3)]


def test_unknown_folder_bad_hash_and_bad_url_are_all_reported_at_once():
    with pytest.raises(ManifestError) as info:
        parse_manifest(
            f"https://h/a.safetensors checkpoint {GOOD}\n"
            "https://h/b.safetensors loras 1234\n"
            f"ftp://h/c.safetensors vae {GOOD}\n"
            f"https://h/d.safetensors ../etc {GOOD}\n"
            "https://h/e.safetensors\n"
        )
    message = str(info.value)
    assert "line 1: unknown model folder 'checkpoint'; use one of ComfyUI's: audio_encoders, checkpoints" in message
    assert "line 2: '1234' is not a sha256 (64 hex characters)" in message
    assert "line 3: 'ftp://h/c.safetensors' is not an https://, http:// or file:// URL" in message
    assert "line 4: unknown model folder '../etc'" in message
    assert "line 5: expected '<url> <folder> <sha256> [file name]'" in message


def test_duplicate_target_is_refused_naming_both_lines():
    with pytest.raises(ManifestError) as info:
        parse_manifest(f"https://a/x.safetensors vae {GOOD}\nhttps://b/other.bin vae/ {BAD} x.safetensors\n")
    assert "line 2: duplicate entry for vae/x.safetensors (already on line 1)" in str(info.value)


def test_url_without_a_file_name_needs_one():
    with pytest.raises(ManifestError, match="line 1: cannot use '' as a file name; give one as the fourth field"):
        parse_manifest(f"https://example.com/ vae {GOOD}\n")


def test_default_manifest_is_valid():
    parse_manifest((ROOT / "builder" / "models.txt").read_text())


# --- fetching --------------------------------------------------------------------------

def test_good_sha256_downloads_into_the_folder(tmp_path, source, models_dir):
    done = run("--manifest", manifest(tmp_path, f"{source.as_uri()} checkpoints/sd {GOOD}\n"),
               "--models-dir", models_dir)
    assert done.returncode == 0, done.stderr
    assert (models_dir / "checkpoints" / "sd" / "tiny model.safetensors").read_bytes() == CONTENT
    assert "checkpoints/sd/tiny model.safetensors downloaded and verified" in done.stdout
    assert not list(models_dir.rglob("*.partial"))


def test_bad_sha256_fails_with_both_hashes_and_keeps_nothing(tmp_path, source, models_dir):
    done = run("--manifest", manifest(tmp_path, f"{source.as_uri()} loras {BAD}\n"), "--models-dir", models_dir)
    assert done.returncode == 1
    assert f"loras/tiny model.safetensors (line 1, {source.as_uri()}): sha256 mismatch: the manifest says {BAD}, " \
           f"the download ({len(CONTENT)} bytes) is {GOOD}; nothing was kept" in done.stderr
    assert [p for p in models_dir.rglob("*") if p.is_file()] == []


def test_file_already_in_place_is_not_downloaded_again(tmp_path, source, models_dir):
    listing = manifest(tmp_path, f"{source.as_uri()} vae {GOOD}\n")
    assert run("--manifest", listing, "--models-dir", models_dir).returncode == 0
    source.unlink()  # a second download would now fail
    again = run("--manifest", listing, "--models-dir", models_dir)
    assert again.returncode == 0, again.stderr
    assert "vae/tiny model.safetensors already there" in again.stdout


def test_existing_file_with_another_hash_is_an_error_and_is_kept(tmp_path, source, models_dir):
    (models_dir / "vae").mkdir()
    (models_dir / "vae" / "tiny model.safetensors").write_bytes(b"old")
    done = run("--manifest", manifest(tmp_path, f"{source.as_uri()} vae {GOOD}\n"), "--models-dir", models_dir)
    assert done.returncode == 1
    assert f"already exists with sha256 {hashlib.sha256(b'old').hexdigest()}, not {GOOD}" in done.stderr
    assert (models_dir / "vae" / "tiny model.safetensors").read_bytes() == b"old"


def test_missing_source_file_is_named(tmp_path, models_dir):
    url = (tmp_path / "gone.safetensors").as_uri()
    done = run("--manifest", manifest(tmp_path, f"{url} vae {GOOD}\n"), "--models-dir", models_dir)
    assert done.returncode == 1
    assert f"vae/gone.safetensors (line 1, {url}): download failed" in done.stderr


def test_missing_models_folder_is_named(tmp_path, source):
    done = run("--manifest", manifest(tmp_path, f"{source.as_uri()} vae {GOOD}\n"), "--models-dir", tmp_path / "nope")
    assert done.returncode == 2
    assert f"the models folder {tmp_path / 'nope'} does not exist" in done.stderr


def test_missing_manifest_is_named(tmp_path, models_dir):
    done = run("--manifest", tmp_path / "absent.txt", "--models-dir", models_dir)
    assert done.returncode == 2 and f"the manifest {tmp_path / 'absent.txt'} does not exist" in done.stderr


def test_bad_manifest_downloads_nothing(tmp_path, source, models_dir):
    done = run("--manifest", manifest(tmp_path, f"{source.as_uri()} vae {GOOD}\n{source.as_uri()} vae {GOOD}\n"),
               "--models-dir", models_dir)
    assert done.returncode == 2 and "line 2: duplicate entry for vae/tiny model.safetensors" in done.stderr
    assert list(models_dir.iterdir()) == []


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/gated/model.bin" and self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(401)
            self.end_headers()
            return
        if self.path.startswith("/flaky/"):  # /flaky/<failures>/<kind>/model.bin: fail that many times first
            _, _, failures, kind, _ = self.path.split("/")
            if sum(1 for path, _ in type(self).seen if path == self.path) <= int(failures):
                if kind == "cut":  # promise the whole body, send half, hang up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(CONTENT)))
                    self.end_headers()
                    self.wfile.write(CONTENT[: len(CONTENT) // 2])
                    self.close_connection = True
                    return
                self.send_response(int(kind))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if self.path == "/missing/model.bin":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/redirect/model.bin":
            self.send_response(302)
            self.send_header("Location", "/plain/model.bin")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(CONTENT)))
        self.end_headers()
        self.wfile.write(CONTENT)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_gated_download_without_token_says_so(tmp_path, models_dir, http_server):
    done = run("--manifest", manifest(tmp_path, f"{http_server}/gated/model.bin vae {GOOD}\n"),
               "--models-dir", models_dir, "--token-hosts", "127.0.0.1", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "download failed: HTTP 401 Unauthorized (a gated file? pass a token with --token-file)" in done.stderr


def test_token_file_is_sent_to_token_hosts_only_and_never_along_redirects(tmp_path, models_dir, http_server):
    token = tmp_path / "hf_token"
    token.write_text("s3cret\n")
    listing = manifest(tmp_path, f"{http_server}/gated/model.bin vae {GOOD}\n"
                                 f"{http_server}/redirect/model.bin loras {GOOD}\n")
    done = run("--manifest", listing, "--models-dir", models_dir, "--token-file", token, "--token-hosts", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    assert _Recorder.seen == [("/gated/model.bin", "Bearer s3cret"), ("/redirect/model.bin", "Bearer s3cret"),
                              ("/plain/model.bin", None)]
    _Recorder.seen = []
    other = run("--manifest", manifest(tmp_path, f"{http_server}/plain/model.bin unet {GOOD}\n"),
                "--models-dir", models_dir, "--token-file", token, "--token-hosts", "huggingface.co")
    assert other.returncode == 0, other.stderr
    assert _Recorder.seen == [("/plain/model.bin", None)]


def fetch_once(tmp_path, models_dir, url, *extra):
    return run("--manifest", manifest(tmp_path, f"{url} vae {GOOD}\n"), "--models-dir", models_dir,
               "--retry-wait", "0", *extra)


@pytest.mark.parametrize("kind", ["503", "429", "cut"])
def test_a_transient_failure_is_retried(tmp_path, models_dir, http_server, kind):
    done = fetch_once(tmp_path, models_dir, f"{http_server}/flaky/1/{kind}/model.bin")
    assert done.returncode == 0, done.stderr
    assert "attempt 2 of 3" in done.stderr
    assert [path for path, _ in _Recorder.seen] == [f"/flaky/1/{kind}/model.bin"] * 2
    assert (models_dir / "vae" / "model.bin").read_bytes() == CONTENT  # not the half of the cut try


def test_retries_give_up_after_the_attempts_naming_the_last_failure(tmp_path, models_dir, http_server):
    done = fetch_once(tmp_path, models_dir, f"{http_server}/flaky/5/503/model.bin", "--attempts", "2")
    assert done.returncode == 1
    assert "vae/model.bin (line 1, " in done.stderr
    assert "download failed: HTTP 503 Service Unavailable (after 2 attempts)" in done.stderr
    assert len(_Recorder.seen) == 2 and not list(models_dir.rglob("*.partial"))


def test_a_404_is_not_retried(tmp_path, models_dir, http_server):
    done = fetch_once(tmp_path, models_dir, f"{http_server}/missing/model.bin")
    assert done.returncode == 1 and "download failed: HTTP 404 Not Found" in done.stderr
    assert len(_Recorder.seen) == 1
