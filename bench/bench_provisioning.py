"""Cold start and provisioning benchmarks, with the real handler.py in RunPod platform mode.

    .venv/bin/python -m bench.bench_provisioning [--model-mb 512] [--rounds 3] [--no-write]

Every worker is `python handler.py` against the RunPod emulator (tests/doubles), with its
own CPU ComfyUI; a job's time is what the emulator saw: job taken -> result posted (what
RunPod bills as the job's execution), and launch -> result for the first job of a cold worker.

1. First job on a cold worker whose workload loads a model (TestLoadWeights: a
   --model-mb safetensors file through comfy.utils.load_torch_file, kept by ComfyUI like a
   checkpoint loader's output; then TestDescribeWeights touches every value), with
   WARMUP_WORKFLOW set to the same workflow and without, alternating, --rounds each.
2. A job with `models` on a model-cache miss (downloaded from a local HTTP server, sha256
   checked) against the same job again (a hit), --rounds files.
3. Boot with a cached CUSTOM_NODES manifest (one node from a local git repository, with a
   requirement: ComfyUI runs from the layered virtualenv) against none: launch -> ComfyUI
   spawned and launch -> ComfyUI ready, alternating, --rounds each.

Writes the "Cold start and provisioning" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from tests.comfy.conftest import serving_media  # noqa: E402
from tests.comfy.nodes.node_repos import OFFLINE_PIP, good_node_files, node_repo, tiny_wheel  # noqa: E402
from tests.comfy_env import free_port, make_comfy_copy, worker_env  # noqa: E402
from tests.doubles.runpod_emulator import FINAL, RunPodEmulator  # noqa: E402

ENDPOINT = "bench"
MIB = 1024 * 1024


def weights_file(path: Path, size_mb: int, seed: int) -> bytes:
    """A safetensors file of one float32 tensor of about size_mb (random, so nothing compresses or dedups)."""
    count = size_mb * MIB // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in (len(header).to_bytes(8, "little"), header):
            out.write(chunk)
            digest.update(chunk)
        rng = __import__("random").Random(seed)
        left = count * 4
        while left:
            piece = min(left, 8 * MIB)
            # small floats: random bytes would contain NaNs; exponent fixed, mantissa random
            data = bytearray(rng.randbytes(piece))
            data[3::4] = b"\x3f" * (piece // 4)
            out.write(data)
            digest.update(data)
            left -= piece
    return digest.digest()


def load_graph(name: str) -> dict[str, Any]:
    return {"1": {"class_type": "TestLoadWeights", "inputs": {"lora_name": name}},
            "2": {"class_type": "TestDescribeWeights", "inputs": {"weights": ["1", 0]}}}


class Worker:
    """One `python handler.py` in platform mode with its own emulator endpoint."""

    def __init__(self, comfy_path: Path, log_path: Path, **env: str) -> None:
        self.emulator = RunPodEmulator(job_take_wait_s=0.5).start()
        self.env = worker_env(comfy_path, free_port(), **self.emulator.worker_env(ENDPOINT, "pod-bench"),
                              ALLOW_PRIVATE_URLS="true", **OFFLINE_PIP, **env)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.launched = 0.0

    def submit(self, job_input: dict[str, Any]) -> str:
        answer = httpx.post(f"{self.emulator.api_base_url}/{ENDPOINT}/run", json={"input": job_input},
                            headers={"Authorization": f"Bearer {self.emulator.api_key}"}, timeout=10)
        return answer.json()["id"]

    def start(self) -> "Worker":
        self.launched = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait(self, job_id: str, timeout_s: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.emulator.lock:
                job = self.emulator.jobs[job_id]
                if job.status in FINAL:
                    if job.status != "COMPLETED":
                        raise RuntimeError(f"job failed: {job.error}\n{self.log_path.read_text()[-3000:]}")
                    return {"execution_s": job.finished_at - job.started_at,
                            "launch_to_result_s": job.finished_at - self.launched, "output": job.output}
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"no result; worker log:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.emulator.stop()


def measure_warmup(tmp: Path, model_mb: int, rounds: int) -> dict[str, Any]:
    comfy_path = make_comfy_copy(tmp / "warmup-ComfyUI")
    name = "bench-weights.safetensors"
    (comfy_path / "models" / "loras").mkdir(parents=True, exist_ok=True)
    weights_file(comfy_path / "models" / "loras" / name, model_mb, seed=1)
    workflow = load_graph(name)
    rows: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for _ in range(rounds):
        for label in ("without", "with"):
            env = {"WARMUP_WORKFLOW": json.dumps(workflow)} if label == "with" else {}
            worker = Worker(comfy_path, tmp / f"warmup-{label}.log", **env)
            try:
                job = worker.submit({"workflow": workflow})  # waiting when the worker starts, as on a cold start
                worker.start()
                rows[label].append(worker.wait(job))
            finally:
                worker.stop()
    return {label: {"execution_s": statistics.median(r["execution_s"] for r in runs),
                    "launch_to_result_s": statistics.median(r["launch_to_result_s"] for r in runs),
                    "all_execution_s": [r["execution_s"] for r in runs]} for label, runs in rows.items()}


def measure_cache(tmp: Path, model_mb: int, rounds: int) -> dict[str, Any]:
    comfy_path = make_comfy_copy(tmp / "cache-ComfyUI")
    served = tmp / "served"
    served.mkdir()
    worker = Worker(comfy_path, tmp / "cache.log", MODEL_CACHE_DIR=str(tmp / "model-cache")).start()
    miss, hit, miss_fetch, hit_fetch = [], [], [], []
    try:
        # a first job waits for ComfyUI's start: done before measuring
        worker.wait(worker.submit({"workflow": {"1": {"class_type": "TestTextOutput", "inputs": {"text": "ready"}}}}))
        with serving_media() as server:
            for i in range(rounds):
                name = f"bench-{i}.safetensors"
                digest = weights_file(served / name, model_mb, seed=10 + i)
                url = server.add(f"/{name}", body=(served / name).read_bytes())
                job = {"workflow": {"1": {"class_type": "TestLoadLora", "inputs": {"lora_name": name}}},
                       "models": [{"url": url, "sha256": digest.hex(), "folder": "loras", "name": name}]}
                for times, fetches in ((miss, miss_fetch), (hit, hit_fetch)):
                    result = worker.wait(worker.submit(job))
                    times.append(result["execution_s"])
                    fetches.append(result["output"]["timings"]["model_fetch_ms"] / 1000)
                server.routes.pop(f"/{name}")
                (served / name).unlink()
    finally:
        worker.stop()
    return {"miss_s": statistics.median(miss), "hit_s": statistics.median(hit),
            "miss_fetch_s": statistics.median(miss_fetch), "hit_fetch_s": statistics.median(hit_fetch),
            "all_miss": miss, "all_hit": hit}


READY_PROBE = (
    "import handler; handler.PROCESS.wait_ready(); "
    "print(handler.PROCESS.started_at, handler.PROCESS.ready_at, handler.BOOT.seconds, flush=True)"
)


def boot_once(comfy_path: Path, **env: str) -> tuple[float, float, float]:
    """(launch -> ComfyUI spawned, launch -> ready, prepare_boot's own seconds) of `import handler`."""
    full_env = worker_env(comfy_path, free_port(), **OFFLINE_PIP, **env)
    launched = time.monotonic()  # CLOCK_MONOTONIC is shared by every process on the machine
    done = subprocess.run([sys.executable, "-c", READY_PROBE], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    spawned, ready, boot_s = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
    return spawned - launched, ready - launched, boot_s


def measure_boot(tmp: Path, rounds: int) -> dict[str, Any]:
    comfy_path = make_comfy_copy(tmp / "boot-ComfyUI")
    wheel = tiny_wheel(tmp / "wheels", "tinydep", "def shout(text):\n    return text.upper() + '!'\n")
    commit = node_repo(tmp / "repos" / "good-node", good_node_files(wheel))
    manifest = {"CUSTOM_NODES": f"file://{tmp / 'repos' / 'good-node'} {commit}",
                "CUSTOM_NODES_DIR": str(tmp / "custom-nodes")}
    first_install = boot_once(comfy_path, **manifest)  # installs onto the "volume"; not counted
    rows: dict[str, list[tuple[float, float, float]]] = {"none": [], "cached": []}
    for _ in range(rounds):
        rows["none"].append(boot_once(comfy_path))
        rows["cached"].append(boot_once(comfy_path, **manifest))
    return {"first_install_s": first_install[2], **{
        label: {"spawn_s": statistics.median(r[0] for r in runs), "ready_s": statistics.median(r[1] for r in runs),
                "boot_s": statistics.median(r[2] for r in runs), "all_ready_s": [r[1] for r in runs],
                "all_spawn_s": [r[0] for r in runs]} for label, runs in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-provisioning-") as tmp_name:
        tmp = Path(tmp_name)
        boot = measure_boot(tmp, args.rounds)
        print(json.dumps(boot, indent=1))
        cache = measure_cache(tmp, args.model_mb, args.rounds)
        print(json.dumps(cache, indent=1))
        warmup = measure_warmup(tmp, args.model_mb, args.rounds)
        print(json.dumps(warmup, indent=1))
    if args.no_write:
        return
    flags = "".join(f" --{k} {v}" for k, v, d in (("model-mb", args.model_mb, 512), ("rounds", args.rounds, 3)) if v != d)
    w, c, b = warmup, cache, boot
    seconds = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    ready = b["none"]["all_ready_s"] + b["cached"]["all_ready_s"]
    body = f"""
Command: `.venv/bin/python -m bench.bench_provisioning{flags}`. Machine: {os.cpu_count()} cores, {platform.machine()},
Python {platform.python_version()}, ComfyUI 0.3.75 on CPU, shared with other test runs (single numbers are noisy).
Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every worker is `python handler.py` in RunPod platform
mode against the RunPod emulator; a job's execution = job taken → result posted, as the emulator saw it.
Medians of {args.rounds} rounds.

**First job on a cold worker** whose workflow loads a {args.model_mb} MB safetensors file
(TestLoadWeights → TestDescribeWeights; ComfyUI keeps the loaded weights like a checkpoint
loader's), the job waiting in the queue when the worker starts:

| | first job's execution (billed) | worker launch → first result |
| --- | --- | --- |
| without a warm-up | {w['without']['execution_s']:.2f} s | {w['without']['launch_to_result_s']:.2f} s |
| `WARMUP_WORKFLOW` = the same workflow | **{w['with']['execution_s']:.2f} s** | {w['with']['launch_to_result_s']:.2f} s |

Without a warm-up the first job waits for ComfyUI's start and the model load; with it, the
SDK asks for the job only after both. Per round, without: {seconds(w['without']['all_execution_s'])} s;
with: {seconds(w['with']['all_execution_s'])} s.

**A job with `models` ({args.model_mb} MB file from a local HTTP server, sha256 checked), miss against hit**
(TestLoadLora loads the file in both):

| | job execution | of which `timings.model_fetch_ms` |
| --- | --- | --- |
| cache miss (download + sha256 + rename) | {c['miss_s']:.2f} s | {c['miss_fetch_s']:.2f} s |
| cache hit | **{c['hit_s']:.2f} s** | {c['hit_fetch_s'] * 1000:.1f} ms |

Per round, miss: {seconds(c['all_miss'])} s; hit: {seconds(c['all_hit'])} s.

**Boot with a cached `CUSTOM_NODES` manifest** (one node from a local git repository with a
requirement, so ComfyUI runs from the layered virtualenv on the "volume") against none
(target: a cached manifest adds at most 1 s to ComfyUI's start-up):

| | launch → ComfyUI spawned | launch → ComfyUI ready | prepare_boot itself |
| --- | --- | --- | --- |
| no manifest | {b['none']['spawn_s']:.2f} s | {b['none']['ready_s']:.2f} s | {b['none']['boot_s'] * 1000:.0f} ms |
| cached manifest | {b['cached']['spawn_s']:.2f} s | {b['cached']['ready_s']:.2f} s | **{b['cached']['boot_s'] * 1000:.0f} ms** |
| difference | {b['cached']['spawn_s'] - b['none']['spawn_s']:+.2f} s | {b['cached']['ready_s'] - b['none']['ready_s']:+.2f} s | |

prepare_boot with the cached manifest is one run of ComfyUI's Python (its version and torch
pins: the install's key) and a state file read; the first install of this manifest took
{b['first_install_s']:.1f} s (git fetch, virtualenv, pip). The spawn column is the worker's own
share, measured directly (shared CLOCK_MONOTONIC); ComfyUI's boot after it ranged from
{min(ready):.1f} to {max(ready):.1f} s in this run, which swamps the ready column's difference.
Launch → ready per round, none: {seconds(b['none']['all_ready_s'])} s; cached: {seconds(b['cached']['all_ready_s'])} s;
launch → spawned, none: {seconds(b['none']['all_spawn_s'])} s; cached: {seconds(b['cached']['all_spawn_s'])} s.
"""
    write_section("Cold start and provisioning", body)


if __name__ == "__main__":
    main()
