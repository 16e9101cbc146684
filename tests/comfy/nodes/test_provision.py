"""CUSTOM_NODES installed onto a temporary "volume" from local git repositories (no ComfyUI needed).

pip runs for real, offline (PIP_NO_INDEX): the requirement is a wheel file the test wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfy.nodes.manifest import ListError
from comfy.nodes.provision import provision_custom_nodes
from comfy.settings import WorkerSettings
from comfy.worker.boot import BootError, prepare_boot, read_manifest
from tests.comfy.nodes.node_repos import OFFLINE_PIP, TORCH_MOVER_FILES, good_node_files, node_repo, tiny_wheel
from tests.comfy_env import ROOT, comfy_cache


@pytest.fixture()
def comfy_python() -> str:
    return str(comfy_cache() / "venv" / "bin" / "python")




@pytest.fixture(autouse=True)
def offline_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE_PIP.items():
        monkeypatch.setenv(name, value)


@pytest.fixture()
def good_node(tmp_path: Path) -> tuple[Path, str]:
    wheel = tiny_wheel(tmp_path / "wheels", "tinydep", "def shout(text):\n    return text.upper() + '!'\n")
    repo = tmp_path / "repos" / "good-node"
    return repo, node_repo(repo, good_node_files(wheel))


def python_says(python: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_node_is_installed_onto_the_volume_and_reused_without_fetching_again(tmp_path, good_node, comfy_python):
    repo, commit = good_node
    manifest = f"# one node\nfile://{repo} {commit}\n"
    volume = tmp_path / "volume"
    first = provision_custom_nodes(manifest, volume, comfy_python)
    assert first.installed_now == ["good-node"] and first.failures == {}
    assert (first.nodes_dir / "good-node" / "__init__.py").is_file()
    # its requirement is in the layer on the volume, seen by the layer's Python with ComfyUI's torch
    done = python_says(first.python, "import tinydep, torch; print(tinydep.shout('ok'), torch.__version__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "OK!"
    assert python_says(comfy_python, "import tinydep").returncode != 0  # ComfyUI's own Python is untouched
    shutil.rmtree(repo)  # a second boot must not need the repository
    second = provision_custom_nodes(manifest, volume, comfy_python)
    assert second.installed_now == [] and second.root == first.root and second.python == first.python


def test_a_node_whose_requirements_would_move_torch_fails_named_and_the_others_install(
    tmp_path, good_node, comfy_python,
):
    repo, commit = good_node
    mover = tmp_path / "repos" / "torch-mover"
    mover_commit = node_repo(mover, TORCH_MOVER_FILES)
    torch_version = "import importlib.metadata as m; print(m.version('torch'))"  # what pip would have changed
    torch_before = python_says(comfy_python, torch_version).stdout
    nodes = provision_custom_nodes(f"file://{mover} {mover_commit}\nfile://{repo} {commit}\n", tmp_path / "v", comfy_python)
    assert list(nodes.failures) == ["torch-mover"]
    failure = nodes.failures["torch-mover"]
    assert failure.stage == "requirements" and "torch==1.0.0" in failure.reason
    assert (nodes.root / "constraints.txt").read_text().startswith("torch==")
    assert (nodes.nodes_dir / "good-node").is_dir() and not (nodes.nodes_dir / "torch-mover").exists()
    assert python_says(comfy_python, torch_version).stdout == torch_before
    assert python_says(nodes.python, torch_version).stdout == torch_before
    # a job that uses its class is told which node and why
    why = nodes.explain("TestTorchMover")
    assert why.startswith("it comes from custom node 'torch-mover' (CUSTOM_NODES), which could not install its requirements")
    state = json.loads((nodes.root / "state.json").read_text())
    assert state["nodes"]["torch-mover"]["status"] == "failed" and state["nodes"]["good-node"]["status"] == "installed"


def test_a_node_that_cannot_be_fetched_is_named_with_its_commit(tmp_path, good_node, comfy_python):
    repo, _ = good_node
    nodes = provision_custom_nodes(f"file://{repo} {'a' * 40}\n", tmp_path / "v", comfy_python)
    assert nodes.failures["good-node"].stage == "checkout"
    assert f"commit {'a' * 40} is not in file://{repo}" in nodes.failures["good-node"].reason
    assert nodes.explain("Anything").startswith("it may come from a custom node that failed: custom node 'good-node'")


def test_another_manifest_gets_its_own_folder(tmp_path, good_node, comfy_python):
    repo, commit = good_node
    one = provision_custom_nodes(f"file://{repo} {commit}\n", tmp_path / "v", comfy_python)
    renamed = provision_custom_nodes(f"file://{repo} {commit} renamed-node\n", tmp_path / "v", comfy_python)
    assert one.root != renamed.root and one.root.is_dir() and (renamed.nodes_dir / "renamed-node").is_dir()


PROVISION = """
import json, sys
from pathlib import Path
from comfy.nodes.provision import provision_custom_nodes
nodes = provision_custom_nodes(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
print(json.dumps(nodes.installed_now))
"""


def test_two_workers_booting_at_once_install_the_manifest_once(tmp_path, good_node, comfy_python):
    repo, commit = good_node
    manifest = f"file://{repo} {commit}\n"
    procs = [subprocess.Popen([sys.executable, "-c", PROVISION, manifest, str(tmp_path / "v"), comfy_python], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    installed = sorted(json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert installed == [[], ["good-node"]]  # one installed it; the other waited and found it done


def test_a_manifest_with_a_branch_stops_the_boot_naming_the_line(tmp_path, comfy_python):
    settings = WorkerSettings(comfy_path=tmp_path, comfy_python=comfy_python, custom_nodes_dir=tmp_path / "v",
                              custom_nodes="https://github.com/x/node main", model_cache_dir=tmp_path / "m")
    with pytest.raises(BootError, match="CUSTOM_NODES line 1: https://github.com/x/node is pinned to 'main'"):
        prepare_boot(settings)
    with pytest.raises(ListError):
        provision_custom_nodes("https://github.com/x/node main", tmp_path / "v", comfy_python)


def test_the_manifest_is_a_file_or_its_lines(tmp_path):
    listing = tmp_path / "nodes.txt"
    listing.write_text(f"https://github.com/x/a {'a' * 40}\n")
    assert read_manifest(str(listing)) == (listing.read_text(), f"CUSTOM_NODES file {listing}")
    assert read_manifest(f"https://github.com/x/a {'a' * 40};https://github.com/x/b {'b' * 40}")[0].splitlines() == [
        f"https://github.com/x/a {'a' * 40}", f"https://github.com/x/b {'b' * 40}"]
    with pytest.raises(BootError, match="the manifest file /nowhere/nodes.txt does not exist"):
        read_manifest("/nowhere/nodes.txt")
