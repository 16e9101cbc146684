"""The builder scripts run from the files the Dockerfile copies into their stage, and nothing else.

builder/install_custom_nodes.py and builder/fetch_models.py share code with the worker
(comfy/nodes/, comfy/models/files.py). Each stage's COPY lines are replayed into an empty
folder standing for the stage's root, and the script is run there with an isolated Python
(-I -S: no site-packages, so no installed copy of this repository), as the image build runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def stage_copies(stage: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of each plain COPY (not --from) in the Dockerfile stage `FROM ... AS stage`."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    body = re.search(rf"^FROM \S+ AS {stage}\n(.*?)(?=^FROM |\Z)", text, flags=re.M | re.S).group(1)
    copies = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", body, flags=re.M):
        *sources, dest = line.split()
        copies.append((sources, dest))
    return copies


def replay(stage: str, root: Path) -> None:
    for sources, dest in stage_copies(stage):
        target = root / dest.lstrip("/")
        for source in sources:
            path = ROOT / source
            if path.is_dir():  # Docker copies a folder's contents into the destination
                shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                destination = target / path.name if dest.endswith("/") else target
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, destination)


@pytest.mark.parametrize("stage,command", [
    ("comfyui", ["builder/install_custom_nodes.py", "--list", "builder/custom_nodes.txt", "--dest", ".", "--check"]),
    ("models", ["builder/fetch_models.py", "--manifest", "builder/models.txt", "--models-dir", ".", "--check"]),
])
def test_the_script_runs_from_its_stages_copies(stage, command, tmp_path):
    replay(stage, tmp_path)
    done = subprocess.run([sys.executable, "-I", "-S", *command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_custom_node_check_lists_the_pinned_node(tmp_path):
    replay("comfyui", tmp_path)
    done = subprocess.run([sys.executable, "-I", "-S", "builder/install_custom_nodes.py", "--list", "builder/custom_nodes.txt",
                           "--dest", ".", "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("ComfyUI-VideoHelperSuite ")
