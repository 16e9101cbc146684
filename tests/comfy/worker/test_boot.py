"""Boot: the real handler.py in RunPod platform mode (the emulator) with CUSTOM_NODES and WARMUP_WORKFLOW.

Three workers boot their own CPU ComfyUI: the first installs a manifest of three nodes from
local git repositories onto a temporary "volume" and runs a warm-up that downloads and
loads a model; the second boots with the same manifest (the repositories deleted: it must
reuse the volume) and a warm-up that fails; the third has WARMUP_REQUIRED=true and a
failing warm-up, so it must stop before taking a job.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.comfy.conftest import serving_media
from tests.comfy.models.tiny_models import described, sha256, tiny_safetensors
from tests.comfy.nodes.node_repos import (
    BROKEN_NODE_FILES, OFFLINE_PIP, TORCH_MOVER_FILES, good_node_files, node_repo, tiny_wheel,
)
from tests.comfy_env import ROOT, comfy_cache, free_port, make_comfy_copy, worker_env
from tests.doubles.runpod_emulator import FINAL, RunPodEmulator

pytestmark = pytest.mark.comfy

ENDPOINT = "boot-endpoint"
WARMUP_TENSORS = {"warm.weight": [0.25, 0.75, 1.0]}
HF_TENSORS = {"hf.weight": [2.0, 4.0]}


def fake_hf_hub(hub: Path) -> None:
    """A Hugging Face hub cache as RunPod fills it: blobs, a snapshot of symlinks, refs/main."""
    repo = hub / "models--test-org--tiny-lora"
    (repo / "blobs").mkdir(parents=True)
    blob = repo / "blobs" / "0123abcd"
    blob.write_bytes(tiny_safetensors(HF_TENSORS))
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tiny.safetensors").symlink_to(Path("../..") / "blobs" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)


def node_job(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"workflow": {"1": {"class_type": class_type, "inputs": inputs}}}


def raising_workflow(message: str) -> dict[str, Any]:
    """A workflow ComfyUI accepts and that fails while it runs (TestRaise -> SaveImage)."""
    return {"1": {"class_type": "TestRaise", "inputs": {"message": message}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}}}


@dataclass
class Boot:
    """What one worker's life showed."""

    log: str
    returncode: int | None
    results: dict[str, Any]  # job label -> the emulator's final job (status, output, error)
    take_calls: list[float]
    output_dir: Path
    comfy_python: str

    def logged_at(self, needle: str) -> float:
        """Wall-clock time of the first log line containing needle (the worker's `asctime`)."""
        for line in self.log.splitlines():
            if needle in line:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        raise AssertionError(f"no {needle!r} in the worker's log:\n{self.log[-4000:]}")


def boot(tmp_path: Path, name: str, jobs: dict[str, dict], expect_exit: bool = False, **env: str) -> Boot:
    """Queue jobs, start handler.py against the emulator, wait for every job (or the exit), stop it."""
    emulator = RunPodEmulator(job_take_wait_s=0.5).start()
    comfy_path = make_comfy_copy(tmp_path / f"{name}-ComfyUI")
    log_path = tmp_path / f"{name}.log"
    try:
        ids = {}
        for label, job_input in jobs.items():
            answer = httpx.post(f"{emulator.api_base_url}/{ENDPOINT}/run", json={"input": job_input},
                                headers={"Authorization": f"Bearer {emulator.api_key}"}, timeout=10)
            ids[label] = answer.json()["id"]
        full_env = worker_env(comfy_path, free_port(), **emulator.worker_env(ENDPOINT, f"pod-{name}"),
                              ALLOW_PRIVATE_URLS="true", **OFFLINE_PIP, **env)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=full_env,
                                    stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        try:
            while True:
                with emulator.lock:
                    done = all(emulator.jobs[i].status in FINAL for i in ids.values())
                if (done and not expect_exit) or proc.poll() is not None:
                    break
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with emulator.lock:
            results = {label: {"status": emulator.jobs[i].status, "output": emulator.jobs[i].output,
                               "error": emulator.jobs[i].error} for label, i in ids.items()}
            takes = [at for _, at in emulator.job_take_calls]
        return Boot(log_path.read_text(errors="replace"), proc.returncode, results, takes, comfy_path / "output",
                    full_env["COMFY_PYTHON"])
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shared "network volume", three node repositories, and a model server for the warm-up."""
    base = tmp_path_factory.mktemp("boot")
    wheel = tiny_wheel(base / "wheels", "tinydep", "def shout(text):\n    return text.upper() + '!'\n")
    repos = base / "repos"
    lines = []
    for folder, files in (("good-node", good_node_files(wheel)), ("broken-node", BROKEN_NODE_FILES),
                          ("torch-mover", TORCH_MOVER_FILES)):
        lines.append(f"file://{repos / folder} {node_repo(repos / folder, files)}")
    model = tiny_safetensors(WARMUP_TENSORS)
    fake_hf_hub(base / "volume" / "huggingface-cache" / "hub")
    with serving_media() as server:
        url = server.add("/models/warm.safetensors", body=model)
        yield {"base": base, "repos": repos, "manifest": "\n".join(lines) + "\n", "server": server,
               "env": {"CUSTOM_NODES_DIR": str(base / "volume" / "custom-nodes"),
                       "MODEL_CACHE_DIR": str(base / "volume" / "models"),
                       "HF_HUB_CACHE": str(base / "volume" / "huggingface-cache" / "hub")},
               "warmup": {"workflow": {
                   "1": {"class_type": "TestLoadLora", "inputs": {"lora_name": "warm.safetensors"}},
                   "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
                   "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "warmup/out"}}},
                   "models": [{"url": url, "sha256": sha256(model), "folder": "loras", "name": "warm.safetensors"}]}}


@pytest.fixture(scope="module")
def first_boot(volume, tmp_path_factory) -> Boot:
    manifest = volume["base"] / "custom_nodes.txt"
    manifest.write_text(volume["manifest"])
    jobs = {"good": node_job("TestVolumeNode", text="hi"), "broken": node_job("TestBrokenNode"),
            "mover": node_job("TestTorchMover"), "hf": node_job("TestLoadLora", lora_name="test-org/tiny-lora/tiny.safetensors")}
    return boot(tmp_path_factory.mktemp("first"), "first", jobs, CUSTOM_NODES=str(manifest),
                WARMUP_WORKFLOW=json.dumps(volume["warmup"]), **volume["env"])


@pytest.fixture(scope="module")
def second_boot(volume, first_boot, tmp_path_factory) -> Boot:
    shutil.rmtree(volume["repos"])  # nothing can be fetched again: the volume must serve
    tmp = tmp_path_factory.mktemp("second")
    failing = tmp / "warmup.json"
    failing.write_text(json.dumps(raising_workflow("warm-up went wrong")))
    return boot(tmp, "second", {"good": node_job("TestVolumeNode", text="again")},
                CUSTOM_NODES=volume["manifest"].replace("\n", ";"), WARMUP_WORKFLOW=str(failing), **volume["env"])


def texts(result: dict[str, Any]) -> list[str]:
    return [o["text"] for o in result["output"]["outputs"] if o.get("kind") == "text"]


# --- warm-up ----------------------------------------------------------------------------------

def test_the_warm_up_runs_before_the_worker_asks_for_a_job(first_boot):
    finished = first_boot.logged_at("warm-up finished in")
    assert first_boot.take_calls and min(first_boot.take_calls) > finished


def test_the_warm_up_downloaded_and_loaded_its_model(first_boot, volume):
    assert (Path(volume["env"]["MODEL_CACHE_DIR"]) / "loras" / "warm.safetensors").is_file()
    assert volume["server"].hits("/models/warm.safetensors") == 1
    # TestLoadLora raises if ComfyUI cannot find or load the file: the warm-up succeeded, so it loaded it
    assert "warm-up: running WARMUP_WORKFLOW" in first_boot.log and "warm-up failed" not in first_boot.log


def test_the_warm_up_time_is_in_the_first_jobs_timings_only(first_boot):
    good = first_boot.results["good"]
    assert good["status"] == "COMPLETED", good
    assert good["output"]["timings"]["warmup_ms"] > 0 and "warmup_error" not in good["output"]
    logged = float(re.search(r"warm-up finished in ([\d.]+) s", first_boot.log).group(1))
    assert abs(good["output"]["timings"]["warmup_ms"] / 1000 - logged) < 0.1
    for label in ("broken", "mover", "hf"):
        assert "warmup_ms" not in (first_boot.results[label]["output"] or {}).get("timings", {})


def test_the_warm_ups_output_files_are_removed(first_boot):
    # The warm-up finished (so its SaveImage saved under output/warmup/); as after any job, the
    # files the run wrote are gone, and so is the folder it made for them.
    assert "warm-up finished in" in first_boot.log
    assert not (first_boot.output_dir / "warmup").exists()


def test_a_failed_warm_up_is_logged_and_the_worker_still_takes_jobs(second_boot):
    assert re.search(r"warm-up failed after [\d.]+ s: execution_error: .*warm-up went wrong", second_boot.log)
    good = second_boot.results["good"]
    assert good["status"] == "COMPLETED", good
    assert "warm-up went wrong" in good["output"]["warmup_error"]
    assert good["output"]["timings"]["warmup_ms"] > 0


def test_with_warmup_required_a_failed_warm_up_stops_the_worker_before_any_job(volume, tmp_path):
    # its model cannot be downloaded (404): it fails before ComfyUI is even needed, so this boot is short
    missing = {"url": volume["server"].url + "/models/missing.safetensors", "sha256": "0" * 64, "folder": "loras"}
    warmup = {"workflow": raising_workflow("unused"), "models": [missing]}
    stopped = boot(tmp_path, "required", {"job": node_job("TestTextOutput", text="x")}, expect_exit=True,
                   WARMUP_WORKFLOW=json.dumps(warmup), WARMUP_REQUIRED="true", MODEL_CACHE_DIR=str(tmp_path / "m"))
    assert stopped.returncode not in (0, None)
    assert "the warm-up failed and WARMUP_REQUIRED is set: model_download: model loras/missing.safetensors" in stopped.log
    assert "HTTP 404" in stopped.log
    assert stopped.take_calls == [] and stopped.results["job"]["status"] == "IN_QUEUE"


# --- custom nodes from the manifest -------------------------------------------------------------

def test_a_manifest_node_is_installed_from_git_with_its_requirements(first_boot):
    good = first_boot.results["good"]
    assert good["status"] == "COMPLETED", good
    assert texts(good) == ["HI!"]  # its class ran, with the requirement installed on the volume
    assert "custom nodes: 2 of 3 ready" in first_boot.log and "(0 reused, 3 installed now)" in first_boot.log


def test_a_node_that_fails_to_import_is_named_in_the_log_and_in_the_job(first_boot):
    broken = first_boot.results["broken"]
    assert broken["status"] == "FAILED"
    assert broken["output"]["error_type"] == "invalid_workflow"
    assert ("unknown node class 'TestBrokenNode' (it comes from custom node 'broken-node' (CUSTOM_NODES), which failed "
            "to import: No module named 'a_module_nobody_installed')") in broken["error"]
    assert "custom node 'broken-node' (CUSTOM_NODES) failed to import" in first_boot.log


def test_a_node_whose_requirements_would_move_torch_is_named_and_torch_stays(first_boot):
    mover = first_boot.results["mover"]
    assert mover["status"] == "FAILED"
    assert "custom node 'torch-mover' (CUSTOM_NODES), which could not install its requirements" in mover["error"]
    assert "torch==1.0.0" in mover["error"]
    assert "custom node 'torch-mover' (CUSTOM_NODES) could not install its requirements" in first_boot.log
    version = subprocess.run([first_boot.comfy_python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                             capture_output=True, text=True).stdout.strip()
    assert version.startswith("2.")


def test_the_second_boot_reuses_the_volume_without_fetching(second_boot):
    good = second_boot.results["good"]
    assert good["status"] == "COMPLETED", good
    assert texts(good) == ["AGAIN!"]
    # good-node and broken-node come from the volume; only the failed torch-mover is tried again (and fails: no repo)
    assert "(2 reused, 1 installed now)" in second_boot.log


# --- RunPod's cached models --------------------------------------------------------------------

def test_runpods_cached_models_are_loaded_by_comfyui_as_org_repo_file(first_boot):
    hf = first_boot.results["hf"]
    assert hf["status"] == "COMPLETED", hf
    assert texts(hf) == described(HF_TENSORS)
