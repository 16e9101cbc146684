#!/usr/bin/env python3
"""Print an image's runtime requirements from pyproject.toml, one a line.

    python3 builder/image_requirements.py [--image worker|dispatcher] pyproject.toml > requirements.txt
    .venv/bin/python builder/image_requirements.py --freeze --image worker pyproject.toml > builder/worker-constraints.txt
    .venv/bin/python builder/image_requirements.py --freeze --image dispatcher pyproject.toml > builder/dispatcher-constraints.txt

Each image installs its own set, and nothing else:

* worker (Dockerfile): `[project].dependencies`, into the worker's own virtualenv beside
  ComfyUI's. handler.py runs from its folder: the package itself is not installed, and
  ComfyUI's Python never sees it (both have a top-level `comfy` package).
* dispatcher (Dockerfile.dispatcher): the `dispatcher` extra only, not the worker's
  dependencies (no runpod, boto3, websocket-client): `python -m supabase_sync` needs none of
  them, and the worker image does not need psycopg.

Standard library only (tomllib, Python 3.11+). `--freeze` (on a development machine, needs
`packaging`) prints the exact versions installed in the running Python for those
requirements and everything they pull in: the set the tests ran with, which the image uses
as pip constraints.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tomllib
from pathlib import Path

IMAGES = ("worker", "dispatcher")


def runtime_requirements(pyproject: Path, image: str = "worker") -> list[str]:
    """The image's requirement list; a pyproject without it is an error naming the file."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    if image == "worker":
        dependencies, where = project.get("dependencies"), "[project] dependencies"
    else:
        dependencies, where = project.get("optional-dependencies", {}).get(image), f"[project.optional-dependencies] {image}"
    if not isinstance(dependencies, list) or not dependencies:
        raise ValueError(f"{pyproject}: no {where} list")
    return [str(item) for item in dependencies]


def frozen_closure(requirements: list[str]) -> list[str]:
    """name==version for the requirements and their dependencies, as installed here.

    Extras are followed: `fastapi[all]` brings in uvicorn, sentry-sdk and the rest, and they
    need pins as much as fastapi does (a dependency's own extras are requested the same way).
    """
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    done: set[tuple[str, str]] = set()  # (name, extra) pairs already expanded; "" is the base
    pending = [(Requirement(item), "") for item in requirements]
    while pending:
        requirement, wanted_by_extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": wanted_by_extra}):
            continue
        name = canonicalize_name(requirement.name)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise ValueError(f"{requirement.name} is not installed in {sys.executable}") from None
        pins[name] = distribution.version
        for extra in ["", *sorted(canonicalize_name(e) for e in requirement.extras)]:
            if (name, extra) in done:
                continue
            done.add((name, extra))
            # Each dependency is kept with the extra that asked for it; its marker decides.
            pending.extend((Requirement(item), extra) for item in distribution.requires or [])
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="image_requirements.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--freeze", action="store_true", help="print the installed closure as name==version pins")
    parser.add_argument("--image", choices=IMAGES, default="worker")
    parser.add_argument("pyproject", type=Path)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    try:
        requirements = runtime_requirements(args.pyproject, args.image)
        if args.freeze:
            python = ".".join(platform.python_version_tuple()[:2])
            print(f"# The {args.image} image's dependencies at the versions its tests ran with (pip constraints), "
                  f"frozen with Python {python}.")
            print(f"# Regenerate: .venv/bin/python builder/image_requirements.py --freeze --image {args.image} "
                  f"pyproject.toml > builder/{args.image}-constraints.txt")
            requirements = frozen_closure(requirements)
        print("\n".join(requirements))
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        print(f"image_requirements: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
