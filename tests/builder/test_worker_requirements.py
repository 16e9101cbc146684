"""The worker's requirements in the image: pyproject's dependencies, at the tested versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "builder" / "worker_requirements.py"


def constraints() -> dict[str, str]:
    lines = (ROOT / "builder" / "worker-constraints.txt").read_text().splitlines()
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines if line and not line.startswith("#"))}


def requirements() -> list[Requirement]:
    out = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout
    return [Requirement(line) for line in out.splitlines()]


def test_prints_pyprojects_dependencies():
    assert "runpod" in {r.name for r in requirements()}


def test_every_dependency_is_pinned_within_its_range():
    pinned = constraints()
    problems = [f"{r}: pinned {pinned.get(canonicalize_name(r.name))}" for r in requirements()
                if canonicalize_name(r.name) not in pinned or pinned[canonicalize_name(r.name)] not in r.specifier]
    assert problems == [], "regenerate builder/worker-constraints.txt (command in its header)"


def test_constraints_are_what_the_tests_run_with():
    fresh = subprocess.run([sys.executable, str(SCRIPT), "--freeze", str(ROOT / "pyproject.toml")],
                           capture_output=True, text=True, check=True).stdout
    assert fresh == (ROOT / "builder" / "worker-constraints.txt").read_text(), \
        "regenerate builder/worker-constraints.txt (command in its header)"


def test_pyproject_without_dependencies_is_named(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[project]\nname = 'x'\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and f"{bad}: no [project] dependencies list" in done.stderr


def test_the_freeze_follows_extras():
    # runpod asks for fastapi[all]: what the extra brings (uvicorn, ...) needs a pin too.
    from builder.worker_requirements import frozen_closure

    with_extra = {line.split("==")[0] for line in frozen_closure(["fastapi[all]"])}
    without = {line.split("==")[0] for line in frozen_closure(["fastapi"])}
    assert "uvicorn" in with_extra and "uvicorn" not in without
    assert "uvicorn" in constraints()
