"""The custom node list: one node a line, each pinned to a commit.

    <git url> <40-hex commit> [folder name]

Blank lines and `#` comments are ignored; the folder name defaults to the last part of
the URL without `.git`. Branches and tags are refused: a node must be pinned to a full
commit so that the same list always installs the same code. The same format serves the
image build (builder/custom_nodes.txt) and the boot-time CUSTOM_NODES manifest.

Standard library only: the image build imports it before anything else is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMIT = re.compile(r"^[0-9a-f]{40}$")
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ListError(ValueError):
    """The custom node list cannot be used; the message names every bad line."""


@dataclass(frozen=True)
class CustomNode:
    """One line of the list: where the node's code is, the commit, and its folder name."""

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
