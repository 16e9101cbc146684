"""Each image's requirements: pyproject's list for it, at the tested versions, and nothing the other needs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "builder" / "image_requirements.py"
IMAGES = ("worker", "dispatcher")


def constraints(image: str) -> dict[str, str]:
    lines = (ROOT / "builder" / f"{image}-constraints.txt").read_text().splitlines()
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines if line and not line.startswith("#"))}


def requirements(image: str) -> list[Requirement]:
    out = subprocess.run([sys.executable, str(SCRIPT), "--image", image, str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout
    return [Requirement(line) for line in out.splitlines()]


def test_each_image_gets_its_own_list_from_pyproject():
    assert "runpod" in {r.name for r in requirements("worker")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirements("dispatcher") == [Requirement(r) for r in project["optional-dependencies"]["dispatcher"]]
    default = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml")], capture_output=True,
                             text=True, check=True).stdout
    assert [Requirement(r) for r in default.splitlines()] == requirements("worker")  # the worker's, when no image is named


@pytest.mark.parametrize("image", IMAGES)
def test_every_dependency_is_pinned_within_its_range(image):
    pinned = constraints(image)
    problems = [f"{r}: pinned {pinned.get(canonicalize_name(r.name))}" for r in requirements(image)
                if canonicalize_name(r.name) not in pinned or pinned[canonicalize_name(r.name)] not in r.specifier]
    assert problems == [], f"regenerate builder/{image}-constraints.txt (command in its header)"


@pytest.mark.parametrize("image", IMAGES)
def test_constraints_are_what_the_tests_run_with(image):
    fresh = subprocess.run([sys.executable, str(SCRIPT), "--freeze", "--image", image, str(ROOT / "pyproject.toml")],
                           capture_output=True, text=True, check=True).stdout
    assert fresh == (ROOT / "builder" / f"{image}-constraints.txt").read_text(), \
        f"regenerate builder/{image}-constraints.txt (command in its header)"


def test_the_dispatcher_image_installs_none_of_the_workers_heavy_parts_and_the_worker_no_psycopg():
    dispatcher = constraints("dispatcher")
    assert not {"runpod", "boto3", "botocore", "websocket-client", "pybase64", "fastapi", "torch"} & set(dispatcher)
    assert {"psycopg", "psycopg-binary", "uvicorn", "starlette", "supabase"} <= set(dispatcher)
    assert "psycopg" not in constraints("worker") and "psycopg-binary" not in constraints("worker")
    shared = set(dispatcher) & set(constraints("worker"))
    assert [n for n in shared if dispatcher[n] != constraints("worker")[n]] == []  # one version of each, both images


def test_a_requirement_both_images_list_has_the_same_range_in_both():
    worker = {canonicalize_name(r.name): r for r in requirements("worker")}
    differ = [f"{r} vs {worker[canonicalize_name(r.name)]}" for r in requirements("dispatcher")
              if canonicalize_name(r.name) in worker and worker[canonicalize_name(r.name)].specifier != r.specifier]
    assert differ == []


def test_constraints_say_which_python_they_were_frozen_with_and_the_dispatcher_image_uses_it():
    header = (ROOT / "builder" / "dispatcher-constraints.txt").read_text().splitlines()[0]
    frozen = re.search(r"frozen with Python (\d+\.\d+)\.", header).group(1)
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim", (ROOT / "Dockerfile.dispatcher").read_text(), re.M)
    assert base and base.group(1) == frozen


def test_a_pyproject_without_the_images_list_is_named(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[project]\nname = 'x'\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and f"{bad}: no [project] dependencies list" in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), "--image", "dispatcher", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and f"{bad}: no [project.optional-dependencies] dispatcher list" in done.stderr


def test_the_freeze_follows_extras():
    # runpod asks for fastapi[all]: what the extra brings (uvicorn, ...) needs a pin too.
    from builder.image_requirements import frozen_closure

    with_extra = {line.split("==")[0] for line in frozen_closure(["fastapi[all]"])}
    without = {line.split("==")[0] for line in frozen_closure(["fastapi"])}
    assert "uvicorn" in with_extra and "uvicorn" not in without
    assert "uvicorn" in constraints("worker")
    assert "psycopg-binary" in constraints("dispatcher")  # psycopg[binary]
