"""Pipelined jobs (JOB_CONCURRENCY): throughput and single-job latency, side by side in one run.

    .venv/bin/python bench/bench_pipelined.py [--rounds 3] [--jobs 6] [--singles 4] [--no-write]

Workload, with I/O about equal to compute:
* a ~200 MB input (`--input-mb`) served by a local HTTP server throttled to about 100 MB/s per
  connection (`--rate-mb-s`), fetched by the job's `inputs` into ComfyUI's input folder;
* a workflow of about 2 s on the CPU ComfyUI: TestReadInput reads the whole input, and TestSleep
  (2 s, `--compute-s`) stands in for the model's time on the GPU (on this 2-core machine real CPU
  work would fight the worker's own download for the cores, which a GPU does not);
* its output, a 1024x1024 PNG, uploaded to moto's S3.

One worker per concurrency (1, 2 and 3), each `python handler.py` with its own CPU ComfyUI, in
RunPod platform mode against the RunPod emulator (tests/doubles/runpod_emulator.py): the SDK's
own loop takes the jobs (job-take, or job-take-batch above 1) and posts the results. Rounds
alternate the order of the workers. Throughput: `--jobs` jobs submitted at once; jobs per
minute = jobs / (last job done - first submitted). Latency: one job alone, submitted -> done and taken by the SDK -> done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from tests.comfy_env import free_port, make_comfy_copy, worker_env  # noqa: E402
from tests.doubles.runpod_emulator import FINAL, RunPodEmulator  # noqa: E402

CONCURRENCIES = (1, 2, 3)
S3_KEY_ID, S3_SECRET = "bench", "bench-secret"
SAMPLES = ROOT / "bench" / "results" / "bench_pipelined.json"


class ThrottledFile:
    """Serves one in-memory file at about `rate` bytes/s per connection (GET only)."""

    def __init__(self, size: int, rate: float) -> None:
        self.body = os.urandom(1 << 20) * (size >> 20)
        self.rate = rate
        holder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(holder.body)))
                self.end_headers()
                started, sent, chunk = time.monotonic(), 0, 1 << 20
                view = memoryview(holder.body)
                try:
                    while sent < len(view):
                        self.wfile.write(view[sent:sent + chunk])
                        sent += chunk
                        ahead = sent / holder.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/input.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Worker:
    concurrency: int
    emulator: RunPodEmulator
    process: subprocess.Popen
    endpoint: str
    batches: list[dict[str, float]] = field(default_factory=list)  # per round: jobs, seconds, jobs/min
    singles: list[float] = field(default_factory=list)  # seconds, submitted -> done
    taken: list[float] = field(default_factory=list)  # seconds, taken by the SDK -> done


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        from moto.server import ThreadedMotoServer
        import boto3

        self.tmp, self.args = tmp, args
        self.logs = ROOT / "bench" / "results" / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.source = ThrottledFile(args.input_mb << 20, args.rate_mb_s * 1e6)
        s3_port = free_port()
        self.s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        self.s3.start()
        self.s3_url = f"http://127.0.0.1:{s3_port}"
        boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
                     region_name="us-east-1").create_bucket(Bucket="bench")
        self.workers: list[Worker] = []
        self.http = httpx.Client(timeout=30)

    def start_worker(self, concurrency: int) -> Worker:
        emulator = RunPodEmulator(job_take_wait_s=1.0).start()
        comfy = make_comfy_copy(self.tmp / f"ComfyUI-{concurrency}")
        endpoint = f"ep-c{concurrency}"
        env = worker_env(comfy, free_port(), **emulator.worker_env(endpoint, f"pod-c{concurrency}"),
                         JOB_CONCURRENCY=str(concurrency), ALLOW_PRIVATE_URLS="true", PROGRESS_INTERVAL_S="0")
        for var in [k for k in env if k.startswith(("BUCKET_", "SUPABASE_", "OUTPUT_"))]:
            env.pop(var)
        log = open(self.logs / f"pipelined-c{concurrency}.log", "wb")
        process = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        worker = Worker(concurrency, emulator, process, endpoint)
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: Worker) -> None:
        deadline = time.monotonic() + 600
        while not worker.emulator.job_take_calls:
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker c{worker.concurrency} did not start; see {self.logs}")
            time.sleep(0.2)

    def job_input(self) -> dict[str, Any]:
        graph = {
            "1": {"class_type": "TestReadInput", "inputs": {"file": "input.bin"}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1,
                                                          "color": int.from_bytes(os.urandom(3), "big")}},
            "3": {"class_type": "TestSleep", "inputs": {"image": ["2", 0], "seconds": self.args.compute_s}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench/out"}},
        }
        return {"workflow": graph,
                "inputs": [{"node": "1", "field": "file", "url": self.source.url, "name": "input.bin"}],
                "output": {"mode": "s3", "endpoint_url": self.s3_url, "bucket": "bench", "access_key_id": S3_KEY_ID,
                           "secret_access_key": S3_SECRET, "poster": False}}

    def submit(self, worker: Worker) -> str:
        answer = self.http.post(f"{worker.emulator.api_base_url}/{worker.endpoint}/run", json={"input": self.job_input()},
                                headers={"Authorization": f"Bearer {worker.emulator.api_key}"})
        answer.raise_for_status()
        return answer.json()["id"]

    def wait(self, worker: Worker, job_ids: list[str]) -> list[Any]:
        deadline = time.monotonic() + 900
        while True:
            with worker.emulator.lock:
                jobs = [worker.emulator.jobs[j] for j in job_ids]
                if all(job.status in FINAL for job in jobs):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"c{worker.concurrency}: jobs did not end; see {self.logs}")
            time.sleep(0.05)
        failed = [(job.id, job.error or job.output) for job in jobs if job.status != "COMPLETED"]
        if failed:
            raise RuntimeError(f"c{worker.concurrency}: jobs failed: {failed}")
        return jobs

    def batch(self, worker: Worker) -> dict[str, float]:
        ids = [self.submit(worker) for _ in range(self.args.jobs)]
        jobs = self.wait(worker, ids)
        span = max(job.finished_at for job in jobs) - min(job.created_at for job in jobs)
        return {"jobs": len(jobs), "seconds": round(span, 3), "jobs_per_min": round(len(jobs) / span * 60, 2)}

    def single(self, worker: Worker) -> tuple[float, float]:
        """(submitted -> done, taken -> done) of one job alone."""
        [job] = self.wait(worker, [self.submit(worker)])
        return round(job.finished_at - job.created_at, 3), round(job.finished_at - job.started_at, 3)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in self.workers:
            try:
                worker.process.wait(30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
            worker.emulator.stop()
        self.s3.stop()
        self.source.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=6, help="jobs submitted at once per throughput round")
    parser.add_argument("--singles", type=int, default=4, help="single jobs per worker per round (latency)")
    parser.add_argument("--input-mb", type=int, default=200)
    parser.add_argument("--rate-mb-s", type=float, default=100.0)
    parser.add_argument("--compute-s", type=float, default=2.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args)
        try:
            workers = [bench.start_worker(c) for c in CONCURRENCIES]
            for worker in workers:
                bench.wait_ready(worker)
                bench.single(worker)  # warm-up: first-job imports, boto3, ComfyUI's caches; not counted
            for round_index in range(args.rounds):
                order = workers if round_index % 2 == 0 else workers[::-1]
                for worker in order:
                    result = bench.batch(worker)
                    worker.batches.append(result)
                    print(f"round {round_index} c{worker.concurrency}: {result}", flush=True)
                for worker in order:
                    for _ in range(args.singles):
                        submitted, taken = bench.single(worker)
                        worker.singles.append(submitted)
                        worker.taken.append(taken)
                    print(f"round {round_index} c{worker.concurrency}: singles {worker.singles[-args.singles:]}",
                          flush=True)
        finally:
            bench.stop()
    report(workers, args)


def report(workers: list[Worker], args: argparse.Namespace) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    SAMPLES.write_text(json.dumps({"when": when, "args": vars(args), "workers": [
        {"concurrency": w.concurrency, "batches": w.batches, "singles": w.singles, "taken": w.taken} for w in workers]}, indent=1))
    base = next(w for w in workers if w.concurrency == 1)
    base_rate = statistics.median(b["jobs_per_min"] for b in base.batches)
    base_latency = statistics.median(base.singles)
    base_taken = statistics.median(base.taken)
    rows = []
    for w in workers:
        rate = statistics.median(b["jobs_per_min"] for b in w.batches)
        latency, taken = statistics.median(w.singles), statistics.median(w.taken)
        rows.append(f"| {w.concurrency} | **{rate:.1f}** | **{rate / base_rate:.2f}×** | "
                    f"{', '.join(str(b['jobs_per_min']) for b in w.batches)} | {latency:.2f} s "
                    f"({(latency / base_latency - 1) * 100:+.1f} %) | {taken:.2f} s (**{(taken / base_taken - 1) * 100:+.1f} %**) |")
    command = " ".join(["bench/bench_pipelined.py", *sys.argv[1:]])
    body = f"""Command: `.venv/bin/python {command}`.
Machine: 2 cores, {platform.machine()}, Python {platform.python_version()}, ComfyUI on CPU, shared with other
test runs (1-minute load average {load:.1f} at the end). Run on {when}.

Workload (I/O about equal to compute): a {args.input_mb} MB input from a local HTTP server throttled to
{args.rate_mb_s:.0f} MB/s per connection; TestReadInput reads it all, TestSleep ({args.compute_s} s) stands in for the
GPU's time; a 1024×1024 PNG uploaded to moto's S3. Each worker is `python handler.py` with its own ComfyUI in
platform mode against the RunPod emulator (the SDK's job-take / job-take-batch and job-done). Throughput:
{args.jobs} jobs submitted at once, jobs / (last done − first submitted), median of {args.rounds} rounds (worker
order alternating). Latency: one job alone, median of {args.rounds * args.singles}: submitted → done (includes the
SDK's wait before it asks for the next job: it sleeps 1 s whenever it holds as many jobs as its concurrency, so a
worker with room left is already asking when the job is submitted), and taken by the SDK → done (the worker's own
time for the job).
Targets: throughput at `JOB_CONCURRENCY=2` ≥ 1.6× that of 1; single-job latency not worse by more than 10 %.

| JOB_CONCURRENCY | jobs/min (median) | vs 1 | each round | latency, submitted → done (vs 1) | taken → done (vs 1) |
| --- | --- | --- | --- | --- | --- |
""" + "\n".join(rows) + "\n"
    print(body)
    if not args.no_write:
        write_section("Pipelined jobs", body)


if __name__ == "__main__":
    main()
