#!/usr/bin/env python3
"""Print the worker's runtime requirements ([project].dependencies of pyproject.toml), one a line.

    python3 builder/worker_requirements.py pyproject.toml > requirements.txt
    .venv/bin/python builder/worker_requirements.py --freeze pyproject.toml > builder/worker-constraints.txt

The image installs only these into the worker's own virtualenv and runs handler.py from its
folder: the worker package itself is not installed, and ComfyUI's Python never sees it (both
have a top-level `comfy` package). Standard library only (tomllib, Python 3.11+).

`--freeze` (on a development machine, needs `packaging`) prints the exact versions installed in
the running Python for those requirements and everything they pull in: the set the tests ran
with, which the image uses as pip constraints.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def runtime_requirements(pyproject: Path) -> list[str]:
    """The dependencies list; a pyproject without one is an error naming the file."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    dependencies = data.get("project", {}).get("dependencies")
    if not isinstance(dependencies, list) or not dependencies:
        raise ValueError(f"{pyproject}: no [project] dependencies list")
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
    freeze = argv[:1] == ["--freeze"]
    if freeze:
        argv = argv[1:]
    if len(argv) != 1:
        print("usage: worker_requirements.py [--freeze] PYPROJECT", file=sys.stderr)
        return 2
    try:
        requirements = runtime_requirements(Path(argv[0]))
        if freeze:
            print("# The worker's dependencies at the versions its tests ran with (pip constraints for the image).")
            print("# Regenerate: .venv/bin/python builder/worker_requirements.py --freeze pyproject.toml > builder/worker-constraints.txt")
            requirements = frozen_closure(requirements)
        print("\n".join(requirements))
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        print(f"worker_requirements: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
