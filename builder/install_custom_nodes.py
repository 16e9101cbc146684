#!/usr/bin/env python3
"""Install ComfyUI custom nodes from a list, each pinned to a commit, with their requirements.

    builder/install_custom_nodes.py --list builder/custom_nodes.txt --dest /comfyui/custom_nodes \
        [--python /opt/comfy-venv/bin/python] [--no-requirements] [--check]

The list has one node per line: ``<git url> <40-hex commit> [folder name]``; blank lines and
``#`` comments are ignored. The folder name defaults to the last part of the URL without
``.git``. Branches and tags are refused: a node must be pinned to a full commit so that the
same list always builds the same image.

Each node is fetched at exactly that commit (a shallow fetch by commit id, which GitHub and
plain git servers allow), checked out, and its ``requirements.txt`` (if any) is installed with
``PYTHON -m pip install -r``. A folder that already holds the pinned commit is left alone;
one at another commit, or not a git checkout, is an error (it is never overwritten).

Standard library only: it runs in the image before anything else is installed. Exit status:
0 done, 1 an install failed, 2 the list or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

COMMIT = re.compile(r"^[0-9a-f]{40}$")
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ListError(ValueError):
    """The custom node list cannot be used; the message names every bad line."""


class InstallError(RuntimeError):
    """A node could not be installed; the message names the node and the cause."""


@dataclass(frozen=True)
class CustomNode:
    url: str
    commit: str
    name: str
    line: int


def _default_name(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def parse_list(text: str, source: str = "custom_nodes.txt") -> list[CustomNode]:
    """Parse the list; every problem is collected and raised at once as ListError."""
    nodes: list[CustomNode] = []
    problems: list[str] = []
    seen_names: dict[str, int] = {}
    seen_urls: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        fields = line.split()
        if len(fields) not in (2, 3):
            problems.append(f"{where}: expected '<git url> <commit> [folder name]', got {line!r}")
            continue
        url, commit = fields[0], fields[1]
        name = fields[2] if len(fields) == 3 else _default_name(url)
        if not COMMIT.match(commit):
            problems.append(
                f"{where}: {url} is pinned to {commit!r}, which is not a full 40-character commit id "
                "(branches and tags can move; pin a commit)"
            )
            continue
        if not FOLDER_NAME.match(name):
            problems.append(f"{where}: folder name {name!r} for {url} is not a plain folder name")
            continue
        normalized_url = url.rstrip("/").removesuffix(".git").lower()
        if normalized_url in seen_urls:
            problems.append(f"{where}: duplicate repository {url} (already on line {seen_urls[normalized_url]})")
            continue
        if name in seen_names:
            problems.append(f"{where}: duplicate folder name {name!r} (already on line {seen_names[name]})")
            continue
        seen_names[name] = number
        seen_urls[normalized_url] = number
        nodes.append(CustomNode(url=url, commit=commit, name=name, line=number))
    if problems:
        raise ListError("\n".join(problems))
    return nodes


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


def install_requirements(node: CustomNode, dest: Path, python: str) -> bool:
    """pip-install dest/<name>/requirements.txt with python; False when there is none."""
    requirements = dest / node.name / "requirements.txt"
    if not requirements.is_file():
        return False
    done = subprocess.run([python, "-m", "pip", "install", "--no-cache-dir", "-r", str(requirements)])
    if done.returncode != 0:
        raise InstallError(f"{node.name}: installing {requirements} failed (pip exit status {done.returncode})")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", required=True, type=Path, help="custom node list (builder/custom_nodes.txt)")
    parser.add_argument("--dest", required=True, type=Path, help="ComfyUI's custom_nodes folder")
    parser.add_argument("--python", default=sys.executable, help="the Python whose pip gets the requirements")
    parser.add_argument("--no-requirements", action="store_true", help="do not install requirements.txt files")
    parser.add_argument("--check", action="store_true", help="only parse the list and print it")
    args = parser.parse_args(argv)

    if not args.list.is_file():
        print(f"install_custom_nodes: the list {args.list} does not exist", file=sys.stderr)
        return 2
    try:
        nodes = parse_list(args.list.read_text(encoding="utf-8"), source=str(args.list))
    except ListError as exc:
        print(f"install_custom_nodes: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for node in nodes:
            print(f"{node.name} {node.commit} {node.url}")
        return 0
    if not args.dest.is_dir():
        print(
            f"install_custom_nodes: the destination {args.dest} does not exist "
            "(it should be ComfyUI's custom_nodes folder)",
            file=sys.stderr,
        )
        return 2
    try:
        for node in nodes:
            fetched = checkout(node, args.dest)
            print(f"install_custom_nodes: {node.name} at {node.commit} {'installed' if fetched else 'already there'}")
            if not args.no_requirements and install_requirements(node, args.dest, args.python):
                print(f"install_custom_nodes: {node.name}: requirements installed")
    except InstallError as exc:
        print(f"install_custom_nodes: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
