"""Media benchmarks: a 500 MB output delivered to S3 (moto) and a 500 MB input downloaded.

    .venv/bin/python -m bench.bench_media [--size-mb 500] [--rounds 2] [--no-write]

Each measured transfer runs in its own subprocess, so its peak RSS (ru_maxrss) is its
own: growth = peak RSS at the end (ru_maxrss) - current RSS just before the transfer
(VmRSS, after imports and client set-up), an upper bound on what the transfer added. The S3 server (moto_server) and the file server (http.server) are separate
processes on 127.0.0.1 and are not counted. The worker's upload (comfy.delivery.deliver's
deliver_to_storage with the default MediaSettings) and a plain boto3 `upload_file` (boto3's
default TransferConfig) of the same file alternate, `--rounds` times each; throughput
is compared on the medians. Writes the "Media" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
KEY_ID, SECRET, BUCKET = "bench", "bench-secret", "bench-media"
MIB = 1024 * 1024
FRAMES, FRAME_BYTES = 64, 200_000  # a batch of frames, as a video-to-frames workflow saves them

_UPLOAD_WORKER = r"""
import json, resource, sys, time
from pathlib import Path
from comfy.delivery.deliver import deliver_to_storage, make_uploader
from comfy.delivery.request import OutputRequest
from comfy.media.settings import MediaSettings
from comfy.delivery.outputs import OutputFile, OutputKind
endpoint, path = sys.argv[1], Path(sys.argv[2])
media = MediaSettings(s3_endpoint_url=endpoint + "/bench-media", s3_access_key_id="bench", s3_secret_access_key="bench-secret")
uploader = make_uploader("s3", OutputRequest(), media)
item = OutputFile(node_id="9", class_type="SaveVideo", key="images", kind=OutputKind.VIDEO, filename=path.name,
                  content_type="video/mp4", size_bytes=path.stat().st_size, path=path)
before = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
started = time.perf_counter()
result = deliver_to_storage([item], uploader, "bench/worker/", "s3")
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_growth_kib": after - before, "sha256": result["outputs"][0]["sha256"]}))
"""

_BOTO3_BASELINE = r"""
import json, resource, sys, time
import boto3
endpoint, path = sys.argv[1], sys.argv[2]
client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                      region_name="us-east-1")
before = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
started = time.perf_counter()
client.upload_file(path, "bench-media", "bench/plain/file.mp4")
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_growth_kib": after - before}))
"""

_MANY_SMALL = r"""
import json, os, sys, time, tempfile
from pathlib import Path
from comfy.delivery.deliver import plan_delivery
from comfy.delivery.request import OutputRequest
from comfy.media.settings import MediaSettings
from comfy.delivery.outputs import OutputFile, OutputKind
endpoint, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
folder = Path(tempfile.mkdtemp(prefix="bench-frames-"))
items = []
for index in range(count):
    path = folder / f"frame_{index:05d}.png"
    path.write_bytes(os.urandom(size))
    items.append(OutputFile(node_id="9", class_type="SaveImage", key="images", kind=OutputKind.IMAGE,
                            filename=path.name, content_type="image/png", size_bytes=size, path=path))
timings = {}
for label, concurrency in (("one_at_a_time", 1), ("default", None)):
    extra = {} if concurrency is None else {"upload_concurrency": concurrency}
    media = MediaSettings(s3_endpoint_url=endpoint + "/bench-media", s3_access_key_id="bench",
                          s3_secret_access_key="bench-secret", **extra)
    plan = plan_delivery(OutputRequest(), media, f"frames-{label}")
    started = time.perf_counter()
    plan.deliver(items)
    timings[label] = time.perf_counter() - started
for item in items:
    item.path.unlink()
folder.rmdir()
print(json.dumps(timings))
"""

_HASH_ONLY = r"""
import json, sys, time
from pathlib import Path
from comfy.delivery.storage.base import sha256_of_file
path = Path(sys.argv[1])
started = time.perf_counter()
sha256_of_file(path)  # the file is in the page cache after the uploads, as during a real one
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

_DOWNLOAD_WORKER = r"""
import json, resource, sys, time
from pathlib import Path
from comfy.media.downloads import download_to_file
from comfy.media.settings import MediaSettings
url, dest = sys.argv[1], Path(sys.argv[2])
settings = MediaSettings(allow_private_urls=True)
before = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
started = time.perf_counter()
got = download_to_file(url, dest, settings)
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_growth_kib": after - before, "size": got.size_bytes}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def run_measured(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_random_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)  # incompressible; repeating a block is enough for transfer timing
    with open(path, "wb") as out:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            out.write(piece)
            written += len(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    size = args.size_mb * 1000 * 1000

    work = Path(tempfile.mkdtemp(prefix="bench-media-"))
    processes: list[subprocess.Popen] = []
    try:
        source = work / "output.mp4"
        write_random_file(source, size)

        s3_port = free_port()
        moto_bin = Path(sys.executable).with_name("moto_server")
        processes.append(subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(s3_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port(s3_port)
        endpoint = f"http://127.0.0.1:{s3_port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)

        worker_runs, plain_runs = [], []
        def plain() -> None:
            plain_runs.append(run_measured(_BOTO3_BASELINE, endpoint, str(source)))
            s3.delete_object(Bucket=BUCKET, Key="bench/plain/file.mp4")

        def worker() -> None:
            worker_runs.append(run_measured(_UPLOAD_WORKER, endpoint, str(source)))
            s3.delete_object(Bucket=BUCKET, Key=f"bench/worker/{source.name}")

        for index in range(args.rounds):  # alternate which goes first, so neither always meets a warmer server
            for step in ((plain, worker) if index % 2 == 0 else (worker, plain)):
                step()

        hash_runs = [run_measured(_HASH_ONLY, str(source)) for _ in range(args.rounds)]
        frame_runs = [run_measured(_MANY_SMALL, endpoint, str(FRAMES), str(FRAME_BYTES)) for _ in range(args.rounds)]

        http_port = free_port()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1", "--directory", str(work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_for_port(http_port)
        download_runs = []
        for index in range(args.rounds):
            dest = work / f"downloaded-{index}.mp4"
            download_runs.append(run_measured(_DOWNLOAD_WORKER, f"http://127.0.0.1:{http_port}/output.mp4", str(dest)))
            assert dest.stat().st_size == size
            dest.unlink()
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    def mb_s(run: dict) -> float:
        return size / 1e6 / run["seconds"]

    worker_speed = statistics.median(mb_s(r) for r in worker_runs)
    plain_speed = statistics.median(mb_s(r) for r in plain_runs)
    worker_rss = max(r["rss_growth_kib"] for r in worker_runs) / 1024
    download_rss = max(r["rss_growth_kib"] for r in download_runs) / 1024
    ratio = worker_speed / plain_speed
    from comfy.media.settings import MediaSettings

    defaults = MediaSettings()
    one_at_a_time = " / ".join(f"{r['one_at_a_time']:.2f}" for r in frame_runs)
    together = " / ".join(f"{r['default']:.2f}" for r in frame_runs)
    lines = [
        f"Command: `.venv/bin/python -m bench.bench_media --size-mb {args.size_mb} --rounds {args.rounds}`",
        f"Machine: {os.cpu_count()} CPU cores (shared); moto_server and http.server on 127.0.0.1 in their own processes.",
        "",
        f"| measurement ({args.size_mb} MB file) | runs | median MB/s | peak RSS growth (MiB, worst run) | target |",
        "| --- | --- | --- | --- | --- |",
        f"| worker upload to S3 (deliver_to_storage, default settings: {defaults.multipart_chunk_bytes // MIB} MiB parts, "
        f"{defaults.upload_concurrency} in flight, sha256 alongside) | "
        f"{', '.join(f'{mb_s(r):.0f}' for r in worker_runs)} | {worker_speed:.0f} | {worker_rss:.1f} | ≤ 64 MiB |",
        f"| plain boto3 `upload_file`, default TransferConfig (same file, same run) | "
        f"{', '.join(f'{mb_s(r):.0f}' for r in plain_runs)} | {plain_speed:.0f} | "
        f"{max(r['rss_growth_kib'] for r in plain_runs) / 1024:.1f} | |",
        f"| sha256 of the same file alone (comfy.delivery.storage.base.sha256_of_file, from the page cache) | "
        f"{', '.join(f'{mb_s(r):.0f}' for r in hash_runs)} | {statistics.median(mb_s(r) for r in hash_runs):.0f} | | |",
        f"| worker download (download_to_file, written as it arrives) | "
        f"{', '.join(f'{mb_s(r):.0f}' for r in download_runs)} | {statistics.median(mb_s(r) for r in download_runs):.0f} | "
        f"{download_rss:.1f} | ≤ 64 MiB |",
        "",
        f"Worker upload throughput = {ratio:.0%} of plain boto3 (target ≥ 80%): "
        f"{'met' if ratio >= 0.8 else 'NOT met'}. Upload RSS growth {worker_rss:.1f} MiB: "
        f"{'met' if worker_rss <= 64 else 'NOT met'}. Download RSS growth {download_rss:.1f} MiB: "
        f"{'met' if download_rss <= 64 else 'NOT met'}.",
        "",
        f"{FRAMES} outputs of {FRAME_BYTES // 1000} KB each to moto (one request each), per round: "
        f"{one_at_a_time} s one at a time (UPLOAD_CONCURRENCY=1), {together} s with the default "
        f"{defaults.upload_concurrency} in flight. On loopback a request costs little; against a remote bucket each "
        "one adds a network round trip, which is what sending them together saves.",
        "",
        f"The sha256 is a second read of the file on its own thread during the upload; alone it takes "
        f"{statistics.median(r['seconds'] for r in hash_runs):.2f} s of CPU for the file, against "
        f"{statistics.median(r['seconds'] for r in worker_runs):.1f} s for the upload. It runs alongside the parts, "
        "so on a machine with a spare core it costs no wall time (here moto_server takes one of the two cores, so it "
        "competes for CPU). A one-pass hash inside the upload would need the parts read in order, i.e. no parallel "
        "parts. Runs spread widely on this shared machine (see the per-run columns); the ratio compares medians.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from bench.report import write_section

        write_section("Media", body)


if __name__ == "__main__":
    main()
