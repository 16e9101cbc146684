"""How long a prompt's end waits on ComfyUI: execution_success -> history entry / `executing` None.

    .venv/bin/python bench/bench_prompt_end.py [--boots 3] [--jobs 4] [--no-write]

A real CPU ComfyUI (the test cache) and a websocket client, nothing of the worker's: each job is the
bench's 1024² LoadImage -> ImageInvert -> SaveImage. ComfyUI is started `--boots` times; after each
start, its first prompt is queued at once (ComfyUI runs a full gc.collect() after it), then `--jobs`
more after a pause that alternates between 11 s (longer than ComfyUI's 10 s gc interval: a full
gc.collect() runs right after the prompt) and 0.5 s (none does). For each job: the time from `execution_success` until GET /history/<id> first
shows the entry when polled at once (what a worker that reads /history on `execution_success`
waits), until `executing` node None arrives (what worker-comfyui waits for before its /history
read), and how long that /history read then takes. Our worker (comfy/server/monitor.py) builds
the result from the events at `execution_success` and waits for none of these.
Writes the "Prompt end" section of docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_results import random_png  # noqa: E402
from bench.report import write_section  # noqa: E402
from tests.comfy_env import comfy_cache, free_port, make_comfy_copy  # noqa: E402

GAPS_S = (11.0, 0.5)


def run(jobs: int) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="bench-prompt-end-"))
    comfy = make_comfy_copy(work / "ComfyUI")
    (comfy / "input" / "bench.png").write_bytes(random_png(1024))
    port = free_port()
    process = subprocess.Popen([str(comfy_cache() / "venv" / "bin" / "python"), "main.py", "--cpu", "--port", str(port),
                                "--listen", "127.0.0.1"], cwd=comfy, stdout=open(work / "comfyui.log", "w"),
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=60)
    try:
        for _ in range(1500):
            try:
                http.get("/prompt")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", timeout=120)
        samples = []
        for index in range(jobs + 1):
            gap = 0.0 if index == 0 else GAPS_S[(index - 1) % 2]
            time.sleep(gap)
            graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "bench.png"}},
                     "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                     "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": uuid.uuid4().hex}}}
            prompt_id = http.post("/prompt", json={"prompt": graph, "client_id": client_id}).json()["prompt_id"]
            while True:
                message = ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "execution_success":
                    success = time.monotonic()
                    break
            while not http.get(f"/history/{prompt_id}").json():  # polled at once, as on execution_success
                pass
            entry = time.monotonic()
            while True:
                message = ws.recv()
                if isinstance(message, str):
                    event = json.loads(message)
                    if event["type"] == "executing" and event["data"].get("node") is None:
                        ended = time.monotonic()
                        break
            http.get(f"/history/{prompt_id}")
            read = time.monotonic() - ended
            samples.append({"gap_s": "first prompt after start" if index == 0 else f"{gap:g} s", "entry_ms": (entry - success) * 1000,
                            "executing_none_ms": (ended - success) * 1000, "history_read_ms": read * 1000})
            print(f"{samples[-1]['gap_s']}: history entry {samples[-1]['entry_ms']:6.1f} ms, executing None "
                  f"{samples[-1]['executing_none_ms']:6.1f} ms, then /history {samples[-1]['history_read_ms']:6.1f} ms",
                  flush=True)
        return samples
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    samples = [sample for _ in range(args.boots) for sample in run(args.jobs)]
    rows = ["| pause before the job | jobs | → history entry, median / max | → `executing` None, median / max | then GET /history, median / max |",
            "| --- | --- | --- | --- | --- |"]
    for gap in dict.fromkeys(s["gap_s"] for s in samples):
        group = [s for s in samples if s["gap_s"] == gap]
        cells = [f"{statistics.median(s[k] for s in group):.1f} / {max(s[k] for s in group):.1f} ms"
                 for k in ("entry_ms", "executing_none_ms", "history_read_ms")]
        rows.append(f"| {gap} | {len(group)} | " + " | ".join(cells) + " |")
    body = f"""
Command: `.venv/bin/python bench/bench_prompt_end.py --boots {args.boots} --jobs {args.jobs}` (run on {when}; 1-minute load average
{load:.1f} at the start, on 2 cores). A real CPU ComfyUI and a bare websocket client; times from ComfyUI's
`execution_success` event. ComfyUI runs a full `gc.collect()` right after its first prompt and after any
prompt that follows a pause over 10 s; none after the 0.5 s pauses.

{chr(10).join(rows)}

Our worker builds the result from the websocket's events at `execution_success` (comfy/server/monitor.py)
and waits for none of these; it reads /history only when the websocket dropped during the prompt.
"""
    print(body)
    if not args.no_write:
        write_section("Prompt end", body)


if __name__ == "__main__":
    main()
