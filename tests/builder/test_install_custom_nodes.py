"""builder/install_custom_nodes.py against local git repositories (file:// URLs)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from builder.install_custom_nodes import ListError, parse_list

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "builder" / "install_custom_nodes.py"
SHA_A = "a" * 40
SHA_B = "b" * 40


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def node_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A custom node repository with two commits: (path, first commit, second commit)."""
    repo = tmp_path / "repos" / "ComfyUI-TestNode"
    repo.mkdir(parents=True)
    git(repo, "init", "--quiet")
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nVERSION = 1\n")
    (repo / "requirements.txt").write_text("some-package==1.0\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nVERSION = 2\n")
    git(repo, "commit", "--quiet", "-am", "two")
    return repo, first, git(repo, "rev-parse", "HEAD")


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for ComfyUI's Python that records the pip command it was given."""
    log = tmp_path / "pip.log"
    script = tmp_path / "fake-python"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def write_list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom_nodes.txt"
    path.write_text(text)
    return path


# --- parsing ---------------------------------------------------------------------------

def test_list_parses_url_commit_and_default_folder_name():
    nodes = parse_list(
        "# comment\n\nhttps://github.com/Kosinkadink/ComfyUI-VideoHelperSuite.git " + SHA_A + "  # VHS\n"
        "https://github.com/x/other-node " + SHA_B + " renamed\n"
    )
    assert [(n.name, n.commit, n.line) for n in nodes] == [
        ("ComfyUI-VideoHelperSuite", SHA_A, 3), ("renamed", SHA_B, 4)]


def test_branch_or_short_commit_is_refused_naming_the_line():
    with pytest.raises(ListError) as info:
        parse_list(f"https://github.com/x/a main\nhttps://github.com/x/b {SHA_A[:7]}\n")
    message = str(info.value)
    assert "line 1: https://github.com/x/a is pinned to 'main', which is not a full 40-character commit" in message
    assert "line 2:" in message and "'aaaaaaa'" in message


def test_duplicate_repository_and_folder_are_refused_with_both_lines():
    with pytest.raises(ListError) as info:
        parse_list(
            f"https://github.com/x/node {SHA_A}\n"
            f"https://github.com/X/node.git {SHA_B}\n"      # same repository, other spelling
            f"https://github.com/y/other {SHA_A} node\n"    # other repository, same folder
        )
    message = str(info.value)
    assert "line 2: duplicate repository https://github.com/X/node.git (already on line 1)" in message
    assert "line 3: duplicate folder name 'node' (already on line 1)" in message


def test_wrong_number_of_fields_and_bad_folder_name_are_refused():
    with pytest.raises(ListError) as info:
        parse_list(f"https://github.com/x/a\nhttps://github.com/x/b {SHA_A} ../escape\n")
    message = str(info.value)
    assert "line 1: expected '<git url> <commit> [folder name]'" in message
    assert "line 2: folder name '../escape'" in message


def test_default_list_pins_videohelpersuite_to_a_commit():
    nodes = parse_list((ROOT / "builder" / "custom_nodes.txt").read_text())
    vhs = [n for n in nodes if n.name == "ComfyUI-VideoHelperSuite"]
    assert len(vhs) == 1 and vhs[0].url.startswith("https://github.com/Kosinkadink/")


# --- installing ------------------------------------------------------------------------

def test_installs_the_pinned_commit_not_the_newest(tmp_path, node_repo, fake_python):
    repo, first, second = node_repo
    python, log = fake_python
    dest = tmp_path / "custom_nodes"
    dest.mkdir()
    listing = write_list(tmp_path, f"file://{repo} {first}\n")
    done = run("--list", listing, "--dest", dest, "--python", python)
    assert done.returncode == 0, done.stderr
    installed = dest / "ComfyUI-TestNode"
    assert "VERSION = 1" in (installed / "__init__.py").read_text()
    assert git(installed, "rev-parse", "HEAD") == first != second
    assert log.read_text().split() == ["-m", "pip", "install", "--no-cache-dir", "-r",
                                       str(installed / "requirements.txt")]
    assert not list(dest.glob(".*partial"))


def test_second_run_leaves_an_installed_node_alone(tmp_path, node_repo, fake_python):
    repo, first, _ = node_repo
    dest = tmp_path / "custom_nodes"
    dest.mkdir()
    listing = write_list(tmp_path, f"file://{repo} {first}\n")
    assert run("--list", listing, "--dest", dest, "--no-requirements").returncode == 0
    again = run("--list", listing, "--dest", dest, "--no-requirements")
    assert again.returncode == 0
    assert "ComfyUI-TestNode at " + first + " already there" in again.stdout


def test_folder_at_another_commit_is_an_error_and_is_kept(tmp_path, node_repo):
    repo, first, second = node_repo
    dest = tmp_path / "custom_nodes"
    dest.mkdir()
    assert run("--list", write_list(tmp_path, f"file://{repo} {first}\n"), "--dest", dest,
               "--no-requirements").returncode == 0
    done = run("--list", write_list(tmp_path, f"file://{repo} {second}\n"), "--dest", dest, "--no-requirements")
    assert done.returncode == 1
    assert f"already holds commit {first}, not the pinned {second}; remove the folder" in done.stderr
    assert "VERSION = 1" in (dest / "ComfyUI-TestNode" / "__init__.py").read_text()


def test_commit_missing_from_the_repository_fails_naming_node_and_commit(tmp_path, node_repo):
    repo, _, _ = node_repo
    dest = tmp_path / "custom_nodes"
    dest.mkdir()
    done = run("--list", write_list(tmp_path, f"file://{repo} {SHA_A}\n"), "--dest", dest, "--no-requirements")
    assert done.returncode == 1
    assert f"ComfyUI-TestNode: commit {SHA_A} is not in file://{repo}" in done.stderr
    assert list(dest.iterdir()) == []  # nothing half-installed


def test_failed_requirements_install_fails_the_run(tmp_path, node_repo):
    repo, first, _ = node_repo
    dest = tmp_path / "custom_nodes"
    dest.mkdir()
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    done = run("--list", write_list(tmp_path, f"file://{repo} {first}\n"), "--dest", dest, "--python", failing)
    assert done.returncode == 1
    assert "ComfyUI-TestNode: installing" in done.stderr and "pip exit status 3" in done.stderr


def test_missing_destination_folder_is_named(tmp_path, node_repo):
    repo, first, _ = node_repo
    done = run("--list", write_list(tmp_path, f"file://{repo} {first}\n"), "--dest", tmp_path / "nope")
    assert done.returncode == 2
    assert f"the destination {tmp_path / 'nope'} does not exist" in done.stderr


def test_missing_list_file_is_named(tmp_path):
    done = run("--list", tmp_path / "absent.txt", "--dest", tmp_path)
    assert done.returncode == 2
    assert f"the list {tmp_path / 'absent.txt'} does not exist" in done.stderr


def test_bad_list_installs_nothing(tmp_path, node_repo):
    repo, first, _ = node_repo
    dest = tmp_path / "custom_nodes"
    dest.mkdir()
    done = run("--list", write_list(tmp_path, f"file://{repo} {first}\nfile://{repo} {first}\n"), "--dest", dest)
    assert done.returncode == 2
    assert "line 2: duplicate" in done.stderr
    assert list(dest.iterdir()) == []
