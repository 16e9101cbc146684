"""Per-job overhead through the RunPod SDK's own path, side by side with worker-comfyui.

    .venv/bin/python bench/bench_results.py --worker-comfyui PATH [--rounds 7]
    .venv/bin/python bench/bench_results.py --worker-comfyui-git URL_OR_PATH   # clones it into bench/results/

worker-comfyui (https://github.com/runpod-workers/worker-comfyui) is not part of this
repository: point --worker-comfyui at a checkout of it (`git clone
https://github.com/runpod-workers/worker-comfyui`), or give --worker-comfyui-git a URL or a local
git repository to clone. Its handler.py runs unchanged under the same runpod SDK as ours (its
ComfyUI address, a module constant, is set to the shared ComfyUI before the SDK starts).

One CPU ComfyUI serves both workers. Each worker runs as RunPod runs it, twice:
* platform mode: `python handler.py` against the RunPod emulator (tests/doubles/runpod_emulator.py):
  the SDK takes the job from job-take and posts the result to job-done. Time = job taken ->
  job-done body received (before the emulator parses it);
* `--rp_serve_api`: the SDK's FastAPI server; time = POST /runsync -> the whole answer read.
Overhead = that time - ComfyUI's own execution time (its execution_start -> execution_success
timestamps in /history). Workloads: a new random 1024x1024 PNG (about 3 MB) sent as base64 ->
LoadImage -> ImageInvert -> SaveImage (one image), and the same through RepeatImageBatch(8)
(eight images, about 25 MB of PNG), returned inline. RESULT_MAX_BYTES is raised to 64 MB for our
worker so that the eight images can come back inline too (its default, 9 MB, sends them to
storage or refuses them). Jobs of the two workers alternate (which goes first swaps every
round), so machine noise hits both alike; medians are reported.

Also measured: the worker's peak RSS growth while it runs the job and returns the result
(VmHWM after the job, reset through /proc/<pid>/clear_refs before it, minus VmRSS before it),
and the result's bytes per output byte (the job-done body against the files' raw bytes).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import dataclasses
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from tests.comfy_env import comfy_cache, free_port, make_comfy_copy, worker_env  # noqa: E402
from tests.doubles.runpod_emulator import RunPodEmulator  # noqa: E402

# worker-comfyui's handler reads ComfyUI's address from a module constant; the SDK starts as in its __main__.
WORKER_COMFYUI_ENTRY = (
    "import sys, os; sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), 'src')]; "
    "import handler; handler.COMFY_HOST = os.environ['BENCH_COMFY_HOST']; "
    "import runpod; runpod.serverless.start({'handler': handler.handler})"
)
SIDES = ("ours", "worker-comfyui")
SAMPLES = ROOT / "bench" / "results" / "bench_results.json"  # every sample of the last run


class StampingEmulator(RunPodEmulator):
    """Records when each job-done body has fully arrived, before parsing it, and its size."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done_at: dict[str, float] = {}
        self.done_bytes: dict[str, int] = {}
        self.done_body: dict[str, bytes] = {}

    async def _job_done(self, request):  # noqa: ANN001
        body = await request.body()
        if b'"IN_PROGRESS"' not in body[:200]:
            job_id = request.path_params["job_id"]
            self.done_at[job_id] = time.monotonic()
            self.done_bytes[job_id] = len(body)
            self.done_body[job_id] = body
        return await super()._job_done(request)


def random_png(size: int = 1024) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def job_input(batch: int) -> dict[str, Any]:
    name = f"bench-{uuid.uuid4().hex[:12]}.png"
    graph: dict[str, Any] = {"1": {"class_type": "LoadImage", "inputs": {"image": name}}}
    source = ["1", 0]
    if batch > 1:
        graph["2"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": batch}}
        source = ["2", 0]
    graph["3"] = {"class_type": "ImageInvert", "inputs": {"image": source}}
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"bench/b{batch}"}}
    return {"workflow": graph, "images": [{"name": name, "image": base64.b64encode(random_png()).decode()}]}


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process, all its threads (those that ended too), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


@dataclass
class Sample:
    overhead_ms: float
    wall_ms: float
    execution_ms: float
    result_bytes: int
    output_bytes: int
    rss_growth_kib: int
    cpu_ms: float  # the worker process's CPU time for the job: robust to a busy machine, unlike wall time


@dataclass
class Worker:
    side: str
    mode: str  # "platform" or "runsync"
    process: subprocess.Popen
    endpoint: str = ""
    port: int = 0
    samples: dict[int, list[Sample]] = field(default_factory=dict)


class Bench:
    emulator_class = StampingEmulator  # a subclass may stamp more (bench/bench_sdk_timeline.py)

    def __init__(self, comfy_path: Path, worker_comfyui: Path, logs: Path) -> None:
        self.comfy_path = comfy_path
        self.worker_comfyui = worker_comfyui
        self.logs = logs
        self.comfy_port = free_port()
        self.comfy_url = f"http://127.0.0.1:{self.comfy_port}"
        self.http = httpx.Client(timeout=600)
        self.emulator = self.emulator_class(job_take_wait_s=1.0).start()
        self.last_span: tuple[float, float] = (0.0, 0.0)  # the last job's measured time (monotonic start, end)
        self.last_execution: tuple[float, float] = (0.0, 0.0)  # ComfyUI's execution of it (wall-clock start, end)
        self.processes: list[subprocess.Popen] = []

    # --- processes ---------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_comfyui(self) -> None:
        python = str(comfy_cache() / "venv" / "bin" / "python")
        self._spawn("comfyui", [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.comfy_port),
                                "--disable-auto-launch"], dict(os.environ), self.comfy_path)
        self._wait_http(f"{self.comfy_url}/system_stats", "ComfyUI")

    def _wait_http(self, url: str, what: str, method: str = "GET", timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.http.request(method, url, timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{what} did not answer at {url}; see {self.logs}")

    def start_worker(self, side: str, mode: str) -> Worker:
        env = worker_env(self.comfy_path, self.comfy_port, COMFY_URL=self.comfy_url, RESULT_MAX_BYTES="64000000",
                         BENCH_COMFY_HOST=f"127.0.0.1:{self.comfy_port}")  # the SDK's default log level
        for var in [k for k in env if k.startswith(("BUCKET_", "SUPABASE_", "OUTPUT_"))]:
            env.pop(var)  # inline results on both sides
        worker = Worker(side, mode, None)  # type: ignore[arg-type]
        args: list[str] = []
        if mode == "platform":
            worker.endpoint = f"ep-{side}-{uuid.uuid4().hex[:6]}"
            env.update(self.emulator.worker_env(worker.endpoint, f"pod-{side}"))
        else:
            worker.port = free_port()
            args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(worker.port)]
        argv, cwd = self.worker_command(side, args, env)
        worker.process = self._spawn(f"{side}-{mode}", argv, env, cwd)
        if mode == "runsync":
            self._wait_http(f"http://127.0.0.1:{worker.port}/docs", f"{side} API server")
        return worker

    def worker_command(self, side: str, args: list[str], env: dict[str, str]) -> tuple[list[str], Path]:
        """The command line and folder that start one worker as RunPod would (`env` may be added to)."""
        if side == "ours":
            return [sys.executable, "-u", "handler.py", *args], ROOT
        return [sys.executable, "-u", "-c", WORKER_COMFYUI_ENTRY, *args], self.worker_comfyui

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.emulator.stop()

    # --- one job -------------------------------------------------------------------------
    def last_execution_ms(self) -> float:
        history = self.http.get(f"{self.comfy_url}/history", params={"max_items": 1}).json()
        [entry] = history.values()
        stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
        self.last_execution = (stamps["execution_start"] / 1000, stamps["execution_success"] / 1000)  # wall clock, s
        return float(stamps["execution_success"] - stamps["execution_start"])

    def run_job(self, worker: Worker, batch: int) -> Sample:
        payload = {"input": job_input(batch)}
        pid = worker.process.pid
        before, _ = rss_kib(pid)
        reset_peak(pid)
        cpu_before = cpu_ms(pid)
        if worker.mode == "platform":
            submitted = self.http.post(f"{self.emulator.api_base_url}/{worker.endpoint}/run", json=payload,
                                       headers={"Authorization": f"Bearer {self.emulator.api_key}"}).json()
            job_id = submitted["id"]
            deadline = time.monotonic() + 600
            while job_id not in self.emulator.done_at:
                if time.monotonic() > deadline or worker.process.poll() is not None:
                    raise RuntimeError(f"{worker.side} did not finish job {job_id}; see {self.logs}")
                time.sleep(0.005)
            time.sleep(0.05)  # let the emulator finish the job before reading it back
            job = self.emulator.jobs[job_id]
            self.last_span = (job.started_at, self.emulator.done_at[job_id])
            wall_ms = (self.last_span[1] - self.last_span[0]) * 1000
            body = json.loads(self.emulator.done_body.pop(job_id))
            result_bytes = self.emulator.done_bytes[job_id]
        else:
            started = time.monotonic()
            response = self.http.post(f"http://127.0.0.1:{worker.port}/runsync", json=payload)
            raw = response.content
            self.last_span = (started, time.monotonic())
            wall_ms = (self.last_span[1] - self.last_span[0]) * 1000
            body = json.loads(raw)
            result_bytes = len(raw)
        _, peak = rss_kib(pid)
        cpu = cpu_ms(pid) - cpu_before
        output = body.get("output") or {}
        if body.get("error") or not output.get("images"):
            raise RuntimeError(f"{worker.side} {worker.mode} job failed: {str(body)[:500]}")
        images = output["images"]
        assert len(images) == batch, f"{worker.side}: {len(images)} images for a batch of {batch}"
        output_bytes = sum(len(base64.b64decode(image["data"])) for image in images)
        execution_ms = self.last_execution_ms()
        return Sample(wall_ms - execution_ms, wall_ms, execution_ms, result_bytes, output_bytes, peak - before, cpu)


def measure(bench_class: type[Bench], worker_comfyui: Path, rounds: int,
            on_sample: Callable[[Bench, Worker, int, Sample], None] | None = None) -> list[Worker]:
    """Start ComfyUI and the four workers (two sides, two modes), warm each up, then run `rounds`
    interleaved rounds of both workloads; every sample goes to its worker (and to `on_sample`)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers and ComfyUI on the way out
    with tempfile.TemporaryDirectory() as tmp:
        logs = ROOT / "bench" / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        bench = bench_class(make_comfy_copy(Path(tmp) / "ComfyUI"), worker_comfyui, logs)
        try:
            bench.start_comfyui()
            workers = [bench.start_worker(side, mode) for mode in ("platform", "runsync") for side in SIDES]
            time.sleep(3)  # the platform workers' first job-take
            for worker in workers:  # warm-up: first-job imports and ComfyUI's caches, not counted
                for batch in (1, 8):
                    bench.run_job(worker, batch)
            for round_index in range(rounds):
                for batch in (1, 8):
                    for mode in ("platform", "runsync"):
                        pair = [w for w in workers if w.mode == mode]
                        for worker in (pair if round_index % 2 == 0 else pair[::-1]):
                            sample = bench.run_job(worker, batch)
                            worker.samples.setdefault(batch, []).append(sample)
                            if on_sample is not None:
                                on_sample(bench, worker, batch, sample)
                            print(f"round {round_index} {worker.side:15s} {mode:8s} x{batch}: overhead "
                                  f"{sample.overhead_ms:7.1f} ms, wall {sample.wall_ms:7.1f} ms, "
                                  f"cpu {sample.cpu_ms:6.0f} ms, result {sample.result_bytes / 1e6:5.1f} MB, "
                                  f"rss +{sample.rss_growth_kib / 1024:5.1f} MiB",
                                  flush=True)
        finally:
            bench.stop()
    return workers


def clone_worker_comfyui(source: str) -> Path:
    dest = ROOT / "bench" / "results" / "worker-comfyui"
    if not (dest / "handler.py").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", source, str(dest)], check=True)
    return dest


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker-comfyui", type=Path, help="a checkout of runpod-workers/worker-comfyui")
    parser.add_argument("--worker-comfyui-git", help="clone worker-comfyui from this URL or git repository")
    parser.add_argument("--rounds", type=int, default=7, help="measured jobs per worker, mode and workload")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--report-only", action="store_true", help=f"rewrite the section from {SAMPLES.name} of the last run")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads(SAMPLES.read_text())
        workers = []
        for entry in saved["workers"]:
            worker = Worker(entry["side"], entry["mode"], None)  # type: ignore[arg-type]
            worker.samples = {int(batch): [Sample(**sample) for sample in samples]
                              for batch, samples in entry["samples"].items()}
            workers.append(worker)
        report(workers, saved["rounds"], saved["commit"], args.no_write, saved["when"])
        return
    if args.worker_comfyui is None and not args.worker_comfyui_git:
        parser.error("give --worker-comfyui PATH (a checkout) or --worker-comfyui-git URL_OR_PATH")
    worker_comfyui = args.worker_comfyui or clone_worker_comfyui(args.worker_comfyui_git)
    worker_comfyui = worker_comfyui.resolve()
    if not (worker_comfyui / "handler.py").exists():
        parser.error(f"{worker_comfyui} has no handler.py: not a worker-comfyui checkout")
    commit = subprocess.run(["git", "-C", str(worker_comfyui), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"

    workers = measure(Bench, worker_comfyui, args.rounds)
    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    SAMPLES.write_text(json.dumps({"rounds": args.rounds, "commit": commit, "when": when, "workers": [
        {"side": w.side, "mode": w.mode,
         "samples": {batch: [dataclasses.asdict(sample) for sample in samples] for batch, samples in w.samples.items()}}
        for w in workers]}, indent=1))
    report(workers, args.rounds, commit, args.no_write, when)


def report(workers: list[Worker], rounds: int, commit: str, no_write: bool, when: str) -> None:
    by = {(w.side, w.mode): w for w in workers}
    rows, memory_rows, size_rows = [], [], []
    for mode, label in (("platform", "platform mode (job-take → job-done)"), ("runsync", "`--rp_serve_api` POST /runsync")):
        for batch, workload in ((1, "one 1024² image"), (8, "eight 1024² images")):
            ours = by[("ours", mode)].samples[batch]
            theirs = by[("worker-comfyui", mode)].samples[batch]
            o, t = median([s.overhead_ms for s in ours]), median([s.overhead_ms for s in theirs])
            co, ct = median([s.cpu_ms for s in ours]), median([s.cpu_ms for s in theirs])
            rows.append(f"| {label} | {workload} | **{o:.0f} ms** | {t:.0f} ms | **{o / t:.2f}** | "
                        f"{co:.0f} ms | {ct:.0f} ms | {co / ct:.2f} | "
                        f"{median([s.execution_ms for s in ours]):.0f} / {median([s.execution_ms for s in theirs]):.0f} ms |")
            size_rows.append(f"| {label} | {workload} | {median([s.result_bytes for s in ours]) / 1e6:.1f} MB | "
                             f"{median([s.result_bytes / s.output_bytes for s in ours]):.3f} | "
                             f"{median([s.result_bytes for s in theirs]) / 1e6:.1f} MB | "
                             f"{median([s.result_bytes / s.output_bytes for s in theirs]):.3f} |")
            if batch == 8:
                growth_o = [s.rss_growth_kib * 1024 / s.result_bytes for s in ours]
                growth_t = [s.rss_growth_kib * 1024 / s.result_bytes for s in theirs]
                memory_rows.append(
                    f"| {label} | {median([s.rss_growth_kib for s in ours]) / 1024:.0f} MiB "
                    f"({median(growth_o):.2f}×, worst {max(growth_o):.2f}×) | "
                    f"{median([s.rss_growth_kib for s in theirs]) / 1024:.0f} MiB ({median(growth_t):.2f}×) |")
    body = f"""
Command: `.venv/bin/python bench/bench_results.py --worker-comfyui <checkout of runpod-workers/worker-comfyui>`
(`--rounds {rounds}`; worker-comfyui at commit {commit}, its handler.py unchanged, under the same runpod
{_runpod_version()} as ours). Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()},
one CPU ComfyUI 0.3.75 serving both workers, other processes running; run on
{when}. Jobs of the two workers alternate; medians of {rounds} jobs each.

**Per-job overhead through the SDK** (targets: ≤ 0.6× worker-comfyui for one image, ≤ 0.5× for eight):
time the SDK's loop spends on the job (platform: job taken → job-done body received; /runsync: request →
answer read) minus ComfyUI's own execution time. Inputs: a new random 1024×1024 PNG sent as base64; outputs
returned inline (our RESULT_MAX_BYTES raised to 64 MB for this run). Worker CPU per job: the worker process's
user + system time for the job (all threads; ComfyUI runs in its own process and is not in it), which a busy
machine slows down far less than wall time.

| path | workload | overhead, ours | worker-comfyui | ratio | worker CPU per job, ours | worker-comfyui | ratio | ComfyUI execution (ours / theirs) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

In platform mode every job also waits 0-100 ms inside the SDK before the handler starts, for both workers:
runpod 1.12's `JobScaler.run_jobs` looks at its job queue every 0.1 s when idle (`asyncio.sleep(0.1)`). That
wait is in the platform-mode times above and is not the handler's to remove; `/runsync` has none.

**Peak RSS growth of the worker while it runs and returns the eight-image result** (target ≤ 2× the result's
size; VmHWM after the job − VmRSS before it, in multiples of the job-done body / answer):

| path | ours | worker-comfyui |
| --- | --- | --- |
{chr(10).join(memory_rows)}

Where the memory goes: the worker holds the result (each file's base64 once; before it was twice), and
runpod 1.12 then holds its JSON text and that text's UTF-8 bytes beside it (platform mode: `json.dumps`,
then aiohttp encodes the string; a socket that cannot take 33 MB at once also gets a copy of the rest in
asyncio's write buffer); `/runsync` serialises through pydantic into a growing buffer, then bytes. In platform
mode the SDK's own copies alone are 2-3× the result, so ≤ 2× cannot be reached there from the handler without
changing the SDK; the handler adds one file's raw bytes per encoding thread. The budget (RESULT_MAX_BYTES,
9 MB) keeps a result this large out of the SDK by default (the largest files go to storage instead).

**Result bytes per output byte** (inline delivery; the job-done body or /runsync answer against the files' raw bytes):

| path | workload | ours | ours, per output byte | worker-comfyui | worker-comfyui, per output byte |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(size_rows)}
"""
    print(body)
    if not no_write:
        write_section("Results through the SDK", body)


def _runpod_version() -> str:
    import runpod

    return runpod.__version__


if __name__ == "__main__":
    main()
