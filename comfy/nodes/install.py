"""Install one custom node: its pinned commit checked out, its requirements pip-installed.

Shared by the image build (builder/install_custom_nodes.py) and the boot-time install onto
the network volume (comfy/nodes/volume.py). Standard library only.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Mapping

from comfy.nodes.manifest import CustomNode

PIP_LOG_TAIL_CHARS = 3000


class InstallError(RuntimeError):
    """A node could not be installed; the message names the node and the cause.

    `output` holds the tail of pip's output when it was captured.
    """

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise InstallError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def _current_commit(folder: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def checkout(node: CustomNode, dest: Path) -> bool:
    """Put node's pinned commit in dest/<name>; False when it was already there."""
    target = dest / node.name
    if target.exists():
        current = _current_commit(target) if (target / ".git").exists() else None
        if current == node.commit:
            return False
        found = f"commit {current}" if current else "something that is not a git checkout"
        raise InstallError(
            f"{node.name}: {target} already holds {found}, not the pinned {node.commit}; "
            "remove the folder to reinstall it"
        )
    partial = dest / f".{node.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run
    partial.mkdir()
    try:
        _git("init", "--quiet", cwd=partial)
        _git("remote", "add", "origin", node.url, cwd=partial)
        try:
            _git("fetch", "--quiet", "--depth", "1", "origin", node.commit, cwd=partial)
        except InstallError:
            # A server that refuses a fetch by commit id: fetch everything, then pick the commit.
            _git("fetch", "--quiet", "origin", cwd=partial)
        try:
            _git("-c", "advice.detachedHead=false", "checkout", "--quiet", node.commit, cwd=partial)
        except InstallError:
            raise InstallError(f"{node.name}: commit {node.commit} is not in {node.url}") from None
        _git("submodule", "update", "--init", "--recursive", "--depth", "1", cwd=partial)
        got = _current_commit(partial)
        if got != node.commit:
            raise InstallError(f"{node.name}: checked out {got}, expected {node.commit}")
        partial.rename(target)
    except InstallError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        message = str(exc)
        raise InstallError(message if message.startswith(node.name) else f"{node.name} ({node.url}): {message}") from None
    return True


def install_requirements(
    node: CustomNode, dest: Path, python: str, constraints: Path | None = None,
    env: Mapping[str, str] | None = None, capture: bool = False,
) -> bool:
    """pip-install dest/<name>/requirements.txt with python; False when there is none.

    Run in the node's folder, so relative paths in its requirements resolve as its author
    meant. constraints (`-c`) hold packages at their versions (the torch pins). With
    capture, pip's output is kept and its tail goes into the error instead of the console.
    """
    folder = dest / node.name
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        return False
    command = [python, "-m", "pip", "install", "--no-cache-dir", "-r", str(requirements)]
    if constraints is not None:
        command += ["-c", str(constraints)]
    done = subprocess.run(command, cwd=folder, env=dict(env) if env is not None else None,
                          capture_output=capture, text=True)
    if done.returncode != 0:
        output = ((done.stdout or "") + (done.stderr or "")).strip()[-PIP_LOG_TAIL_CHARS:] if capture else ""
        # pip's own ERROR lines say why (a conflict, a missing package); the rest goes in `output`
        errors = [line for line in output.splitlines() if line.startswith("ERROR:")][-2:]
        why = (": " + " ".join(errors)) if errors else ""
        raise InstallError(f"{node.name}: installing its requirements.txt failed (pip exit status {done.returncode}){why}",
                           output)
    return True
