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

Standard library only (with comfy/nodes/, which holds the list format and the install steps
the worker shares at boot): it runs in the image before anything else is installed. Exit status:
0 done, 1 an install failed, 2 the list or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The list format and the install steps are shared with the worker's boot-time install
# (CUSTOM_NODES): comfy/nodes/, standard library only, beside builder/ here and in the image.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from comfy.nodes.install import InstallError, checkout, install_requirements  # noqa: E402
from comfy.nodes.manifest import CustomNode, ListError, parse_list  # noqa: E402

__all__ = ["CustomNode", "InstallError", "ListError", "checkout", "install_requirements", "main", "parse_list"]


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
