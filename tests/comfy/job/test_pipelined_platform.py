"""Pipelined jobs through the real SDK loop: handler.py in RunPod platform mode against the
emulator, with JOB_CONCURRENCY=2, its own CPU ComfyUI, inputs from a local file server and its
heartbeat into a real PostgreSQL (through the PostgREST double).

The tests share one worker and run in file order; the last one crashes ComfyUI, after which the
worker takes no more jobs (it waits to be replaced). The last test runs a worker with the default
JOB_CONCURRENCY=1 against the session's ComfyUI, to show that nothing overlaps there.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.comfy.conftest import MediaServer, serving_media
from tests.comfy_env import ROOT, free_port, make_comfy_copy, worker_env
from tests.conftest import file_bytes, png_bytes
from tests.doubles.runpod_emulator import FINAL, RunPodEmulator
from tests.fixtures.postgres import Database, fresh_database

pytestmark = pytest.mark.comfy

ENDPOINT = "ep-pipelined"
RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)


@dataclass
class Worker:
    """One handler.py process and what it talks to."""

    emulator: RunPodEmulator
    media: MediaServer
    db: Database | None
    process: subprocess.Popen
    log_path: Path
    comfy_url: str
    comfy_path: Path
    comfy_baseline: set[str]  # what ComfyUI's folders held once the worker asked for its first job

    def submit(self, job_input: dict[str, Any]) -> str:
        answer = httpx.post(f"{self.emulator.api_base_url}/{ENDPOINT}/run", json={"input": job_input},
                            headers={"Authorization": f"Bearer {self.emulator.api_key}"}, timeout=10)
        return answer.json()["id"]

    def cancel(self, job_id: str) -> None:
        httpx.post(f"{self.emulator.api_base_url}/{ENDPOINT}/cancel/{job_id}",
                   headers={"Authorization": f"Bearer {self.emulator.api_key}"}, timeout=10).raise_for_status()

    def job(self, job_id: str):
        with self.emulator.lock:
            return self.emulator.jobs[job_id]

    def wait_final(self, *job_ids: str, timeout_s: float = 120.0) -> None:
        until(lambda: all(self.job(j).status in FINAL for j in job_ids), "the jobs to end", timeout_s, self)

    def history(self, prompt_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.comfy_url}/history/{prompt_id}", timeout=10).json()[prompt_id]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def until(condition, what: str, timeout_s: float = 60.0, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            f" (left in ComfyUI's folders: {leftovers(worker)})\n{worker.log()[-4000:]}" if worker else "")
        time.sleep(0.05)


def start_worker(tmp: Path, name: str, media: MediaServer, db: Database | None, **env: str) -> Worker:
    emulator = RunPodEmulator(job_take_wait_s=0.5).start()
    comfy_path = Path(env.pop("COMFY_PATH")) if "COMFY_PATH" in env else make_comfy_copy(tmp / f"{name}-ComfyUI")
    port = int(env.pop("COMFY_PORT", free_port()))
    full_env = worker_env(comfy_path, port, **emulator.worker_env(ENDPOINT, f"pod-{name}"),
                          ALLOW_PRIVATE_URLS="true", OUTPUT_MODE="inline", PROGRESS_INTERVAL_S="0", **env)
    if db is not None:
        full_env.update(SUPABASE_URL=db.url, SUPABASE_SERVICE_ROLE_KEY=db.service_key, HEARTBEAT_INTERVAL="0.3")
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=ROOT, env=full_env,
                                   stdout=log, stderr=subprocess.STDOUT)
    worker = Worker(emulator, media, db, process, log_path, env.get("COMFY_URL") or f"http://127.0.0.1:{port}",
                    comfy_path, set())
    until(lambda: emulator.job_take_calls or process.poll() is not None, "the worker's first job request", 240, worker)
    assert process.poll() is None, worker.log()[-4000:]
    worker.comfy_baseline = comfy_files(comfy_path)  # (the warm-up's own files are gone by then)
    return worker


def stop_worker(worker: Worker) -> None:
    if worker.process.poll() is None:
        worker.process.terminate()
    try:
        worker.process.wait(30)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait(10)
    worker.emulator.stop()


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with serving_media() as server:
        yield server


@pytest.fixture(scope="module")
def pipelined(tmp_path_factory, media, pg_cluster) -> Iterator[Worker]:
    warmup = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "warmup/w"}}}
    with fresh_database(pg_cluster) as db:
        worker = start_worker(tmp_path_factory.mktemp("pipelined"), "pipelined", media, db,
                              JOB_CONCURRENCY="2", WARMUP_WORKFLOW=json.dumps(warmup))
        try:
            yield worker
        finally:
            stop_worker(worker)


def image_job(url: str, prefix: str, task_id: str | None = None, sleep_s: float = 0.0, crash: bool = False) -> dict:
    """A PNG fetched from `url` into LoadImage, optionally slept on (or crashed on), inverted and saved."""
    graph: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": sleep_s}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    if crash:
        graph["5"] = {"class_type": "TestCrash", "inputs": {"image": ["2", 0], "seconds": 0.0}}
        graph["3"]["inputs"]["image"] = ["5", 0]
    job: dict[str, Any] = {"workflow": graph, "inputs": [{"node": "1", "field": "image", "url": url, "name": "in.png"}]}
    if task_id:
        job["task_id"] = task_id
    return job


def pixel(output: dict[str, Any]) -> tuple[int, int, int]:
    from PIL import Image

    [entry] = [o for o in output["outputs"] if o["kind"] == "image"]
    return Image.open(io.BytesIO(file_bytes(output, entry))).convert("RGB").getpixel((0, 0))


def inverted(rgb: tuple[int, int, int]) -> "Colour":
    return Colour(tuple(255 - c for c in rgb))


class Colour(tuple):
    """Equal to a pixel within 1 per channel (ComfyUI's round trip through floats)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, tuple) and len(other) == len(self) and all(abs(a - b) <= 1 for a, b in zip(self, other))

    __hash__ = tuple.__hash__


def comfy_span(worker: Worker, output: dict[str, Any]) -> tuple[float, float]:
    """ComfyUI's own execution_start and execution_success times of the job's prompt (wall clock, s)."""
    messages = dict((kind, data) for kind, data in worker.history(output["prompt_id"])["status"]["messages"])
    return messages["execution_start"]["timestamp"] / 1000, messages["execution_success"]["timestamp"] / 1000


def wall(monotonic_s: float) -> float:
    return monotonic_s + (time.time() - time.monotonic())


def comfy_files(comfy_path: Path) -> set[str]:
    return {str(p.relative_to(comfy_path)) for folder in ("input", "output", "temp")
            for p in (comfy_path / folder).rglob("*")}


def leftovers(worker: Worker) -> list[str]:
    """Files and folders in ComfyUI's input/, output/ and temp/ that were not there when it started taking jobs."""
    return sorted(comfy_files(worker.comfy_path) - worker.comfy_baseline)


def test_the_next_jobs_download_overlaps_the_running_prompt_and_their_files_never_mix(pipelined):
    worker = pipelined
    first_url = worker.media.add("/first.png", body=png_bytes(32, 32, RED), content_type="image/png")
    # The second job's file takes 1.5 s to start arriving: long enough to end inside the first's 4 s prompt.
    second_url = worker.media.add("/second.png", body=png_bytes(32, 32, BLUE), content_type="image/png", delay_s=1.5)
    tasks = [str(uuid.uuid4()), str(uuid.uuid4())]
    first = worker.submit(image_job(first_url, "pipe/out", tasks[0], sleep_s=4.0))
    second = worker.submit(image_job(second_url, "pipe/out", tasks[1]))

    def row() -> dict[str, Any]:
        rows = worker.db.sql("select current_task_ids from workers where id = 'comfy-worker-pod-pipelined'")
        return rows[0] if rows else {}
    # While both are on the worker, its row in `workers` lists both tasks, in the order they came.
    until(lambda: [str(t) for t in row().get("current_task_ids") or []] == tasks, "both tasks in the workers row", 30, worker)
    worker.wait_final(first, second)

    one, two = worker.job(first), worker.job(second)
    assert one.status == "COMPLETED" and two.status == "COMPLETED", (one.output, one.error, two.output, two.error)
    assert pixel(one.output) == inverted(RED) and pixel(two.output) == inverted(BLUE)
    assert ("job-take-batch", [first, second]) in worker.emulator.taken or any(
        route == "job-take-batch" and first in ids for route, ids in worker.emulator.taken)
    first_start, first_end = comfy_span(worker, one.output)
    second_start, _ = comfy_span(worker, two.output)
    asked = wall(worker.media.arrivals["/second.png"][0])
    assert first_start < asked + 1.5 < first_end  # the second's input arrived while the first prompt ran...
    assert second_start >= first_end  # ...and its prompt ran only after the first one's: one at a time
    assert two.output["timings"]["slot_wait_ms"] > 0 and one.output["timings"]["execution_ms"] >= 3900
    until(lambda: leftovers(worker) == [], "the jobs' files to be gone", 10, worker)
    until(lambda: row().get("current_task_ids") == [], "the workers row to show no task", 10, worker)


def test_cancelling_a_job_while_it_prepares_leaves_the_running_prompt_alone(pipelined):
    worker = pipelined
    running_url = worker.media.add("/running.png", body=png_bytes(16, 16, GREEN), content_type="image/png")
    gate = threading.Event()
    held_url = worker.media.add("/held.png", body=png_bytes(16, 16, RED), content_type="image/png", gate=gate)
    log_before = len(worker.log())
    try:
        running = worker.submit(image_job(running_url, "pipe/running", sleep_s=4.0))
        preparing = worker.submit(image_job(held_url, "pipe/preparing"))
        until(lambda: worker.media.hits("/held.png") == 1 and worker.job(running).status == "IN_PROGRESS",
              "the second job fetching its input", 30, worker)
        worker.cancel(preparing)
        worker.wait_final(running)
    finally:
        gate.set()

    done = worker.job(running)
    assert done.status == "COMPLETED", (done.output, done.error)
    assert pixel(done.output) == inverted(GREEN)
    assert done.output["timings"]["execution_ms"] >= 3900  # it ran to its end: never interrupted
    assert worker.job(preparing).status == "CANCELLED"
    log = worker.log()[log_before:]
    assert "Stopping job." in log  # the SDK did stop the cancelled job's task...
    assert not re.search(r"Interrupting prompt|Global interrupt", log)  # ...and ComfyUI was never told to interrupt
    until(lambda: leftovers(worker) == [], "the jobs' files to be gone (the partial download too)", 20, worker)


def test_a_comfyui_crash_fails_only_the_executing_job_and_the_prepared_one_runs_on_the_new_comfyui(pipelined):
    worker = pipelined
    crash_url = worker.media.add("/crash.png", body=png_bytes(16, 16, RED), content_type="image/png")
    next_url = worker.media.add("/next.png", body=png_bytes(16, 16, BLUE), content_type="image/png")
    crashing = worker.submit(image_job(crash_url, "pipe/crash", sleep_s=1.5, crash=True))
    prepared = worker.submit(image_job(next_url, "pipe/next"))
    worker.wait_final(crashing, prepared, timeout_s=240)

    failed, survived = worker.job(crashing), worker.job(prepared)
    assert failed.status == "FAILED" and failed.output["error_type"] == "comfy_unavailable", (failed.output, failed.error)
    assert "killed by signal 9" in failed.error
    assert survived.status == "COMPLETED", (survived.output, survived.error)
    assert pixel(survived.output) == inverted(BLUE)
    assert worker.history(survived.output["prompt_id"])  # it ran on the new ComfyUI, which knows its prompt
    # REFRESH_WORKER_AFTER_CRASH: the worker asks to be replaced with its last job, not the crashed one,
    # so the job it still held was not lost with it; and it takes no job meanwhile.
    assert worker.emulator.stop_pod == [prepared]
    waiting = worker.submit(image_job(next_url, "pipe/never"))
    time.sleep(3)
    assert worker.job(waiting).status == "IN_QUEUE"
    until(lambda: leftovers(worker) == [], "the jobs' files to be gone", 20, worker)


def test_with_concurrency_one_the_next_job_is_taken_only_once_the_last_one_ended(worker, tmp_path, media):
    # The default JOB_CONCURRENCY: one job on the worker, taken through /job-take, as before pipelining.
    one = start_worker(tmp_path, "serial", media, None, COMFY_URL=worker.SETTINGS.base_url,
                       COMFY_PATH=str(worker.SETTINGS.comfy_path), COMFY_PORT=str(worker.SETTINGS.comfy_port))
    try:
        first_url = media.add("/serial-first.png", body=png_bytes(16, 16, RED), content_type="image/png")
        second_url = media.add("/serial-second.png", body=png_bytes(16, 16, BLUE), content_type="image/png")
        first = one.submit(image_job(first_url, "serial/out", sleep_s=2.0))
        second = one.submit(image_job(second_url, "serial/out"))
        one.wait_final(first, second)
        a, b = one.job(first), one.job(second)
        assert a.status == "COMPLETED" and b.status == "COMPLETED", (a.output, a.error, b.output, b.error)
        assert pixel(a.output) == inverted(RED) and pixel(b.output) == inverted(BLUE)
        assert {route for route, _ in one.emulator.taken} == {"job-take"}
        assert media.arrivals["/serial-second.png"][0] > a.finished_at - 0.05  # nothing of the second before the first ended
        assert "slot_wait_ms" not in a.output["timings"] and "slot_wait_ms" not in b.output["timings"]
    finally:
        stop_worker(one)
