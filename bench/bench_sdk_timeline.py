"""Where a job's time and memory go on the RunPod SDK's path, for our worker and worker-comfyui.

    .venv/bin/python bench/bench_sdk_timeline.py --worker-comfyui PATH [--rounds 11]
    .venv/bin/python bench/bench_sdk_timeline.py --report-only      # again from bench/results/bench_sdk_timeline.json

The same workers, workloads and interleaved schedule as bench/bench_results.py (its `measure`), but each
worker starts through bench/sdk_timeline.py, which writes a line at every step of the SDK and of the
handler, with the process's memory; the emulator stamps job-take and the job-done body. Each job's
measured time (platform: job taken -> job-done body received; /runsync: request -> answer read) is cut
into consecutive segments that add up to it; ComfyUI's own execution (its /history timestamps) is the
one segment left out, as in bench_results' overhead. Medians per segment over the rounds.
The wrappers cost microseconds; the headline figures stay bench_results.py's, measured without them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_results import SIDES, Bench, Sample, Worker, measure  # noqa: E402
from bench.report import write_section  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAVED = RESULTS / "bench_sdk_timeline.json"
ENTRY = ROOT / "bench" / "sdk_timeline.py"

# (segment, from event, to event); "take"/"end" are the measured span, "exec>"/"exec<" ComfyUI's execution.
PLATFORM_SEGMENTS = [
    ("job-take answer read by the SDK", "take", "sdk.job_received"),
    ("SDK queue poll (0-100 ms)", "sdk.job_received", "handler>"),
    ("handler, before ComfyUI runs", "handler>", "exec>"),
    ("handler, after ComfyUI ran", "exec<", "handler<"),
    ("SDK: handler return -> json.dumps (its f-strings)", "handler<", "sdk.json_dumps>"),
    ("SDK: json.dumps of the result", "sdk.json_dumps>", "sdk.json_dumps<"),
    ("SDK: job-done POST until the body is in", "sdk.json_dumps<", "end"),
]
RUNSYNC_SEGMENTS = [
    ("request in (upload, FastAPI, pydantic)", "take", "handler>"),
    ("handler, before ComfyUI runs", "handler>", "exec>"),
    ("handler, after ComfyUI ran", "exec<", "handler<"),
    ("SDK: handler return -> answer built (f-strings, jsonable_encoder)", "handler<", "sdk.runsync<"),
    ("answer out (FastAPI serialises, sends; client reads)", "sdk.runsync<", "end"),
]


@dataclass
class JobRecord:
    side: str
    mode: str
    batch: int
    span: tuple[float, float]  # monotonic, as measured by the bench
    execution: tuple[float, float]  # ComfyUI's execution, monotonic
    overhead_ms: float
    result_bytes: int
    job_id: str = ""
    segments_ms: dict[str, float] = field(default_factory=dict)
    memory_mib: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def timeline_path(side: str, mode: str) -> Path:
    return RESULTS / f"timeline-{side}-{mode}.jsonl"


class TimelineBench(Bench):
    """Bench whose workers start through bench/sdk_timeline.py, each writing its own timeline file."""

    tracemalloc = False  # the workers also trace Python's allocations (memory, not time)

    def worker_command(self, side: str, args: list[str], env: dict[str, str]) -> tuple[list[str], Path]:
        path = timeline_path(side, "runsync" if "--rp_serve_api" in args else "platform")
        path.unlink(missing_ok=True)
        env.update(TIMELINE_FILE=str(path), TIMELINE_WORKER=side, TIMELINE_TRACEMALLOC="1" if self.tracemalloc else "0")
        _, cwd = super().worker_command(side, args, env)
        return [sys.executable, "-u", str(ENTRY), *args], cwd


def record_sample(records: list[JobRecord]):
    def on_sample(bench: Bench, worker: Worker, batch: int, sample: Sample) -> None:
        offset = time.time() - time.monotonic()  # ComfyUI stamps wall-clock time
        start, end = bench.last_execution
        job_id = ""
        if worker.mode == "platform":
            job_id = next(j.id for j in bench.emulator.jobs.values() if j.started_at == bench.last_span[0])
        records.append(JobRecord(worker.side, worker.mode, batch, bench.last_span, (start - offset, end - offset),
                                 sample.overhead_ms, sample.result_bytes, job_id))
    return on_sample


def read_timeline(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def analyse(record: JobRecord, lines: list[dict[str, Any]]) -> None:
    """Fill the record's segments, memory and counts from its worker's timeline lines."""
    start, end = record.span
    window = [line for line in lines if start - 0.002 <= line["t"] <= end + 0.002]
    stamps = {"take": start, "end": end, "exec>": record.execution[0], "exec<": record.execution[1]}

    def first(event: str, after: float) -> dict[str, Any] | None:  # (a step may end after the measured span)
        return next((line for line in lines if line["event"] == event and line["t"] >= after), None)

    segments = PLATFORM_SEGMENTS if record.mode == "platform" else RUNSYNC_SEGMENTS
    cursor = start
    for name, begin, finish in segments:
        t0 = stamps.get(begin) if begin in stamps else (first(begin, cursor) or {}).get("t")
        t1 = stamps.get(finish) if finish in stamps else (first(finish, t0 or cursor) or {}).get("t")
        if t0 is None or t1 is None:
            raise RuntimeError(f"{record.side} {record.mode} x{record.batch}: no {begin!r} or {finish!r} in its timeline")
        stamps[begin], stamps[finish] = t0, t1
        record.segments_ms[name] = (t1 - t0) * 1000
        cursor = t1
    after_exec = [line for line in window if line["t"] >= record.execution[1]]
    record.counts["history reads after the end"] = sum(line["event"] == "ours.history>" for line in after_exec)
    record.counts["gc pauses (gen 1-2)"] = sum(line["event"].startswith("gc") and line["event"].endswith(">")
                                               for line in window)
    # Memory (a --tracemalloc run): bytes Python holds above what it held when the SDK got the job.
    if not window or "py_kib" not in window[0]:
        return
    base = window[0]["py_kib"]
    handler_end = first("handler<", start)

    def peak(t0: float, t1: float) -> float:
        inside = [line["py_peak_kib"] for line in lines if t0 < line["t"] <= t1]
        return (max(inside) - base) / 1024 if inside else float("nan")

    memory = record.memory_mib
    memory["held when the handler returns (the result)"] = (handler_end["py_kib"] - base) / 1024
    memory["peak while the handler runs"] = peak(start, handler_end["t"])
    if record.mode == "platform":
        dumps_end = first("sdk.json_dumps<", handler_end["t"])
        post_end = first("sdk.post<", dumps_end["t"])
        memory["peak during the SDK's json.dumps"] = peak(handler_end["t"], dumps_end["t"])
        memory["peak during the SDK's job-done POST"] = peak(dumps_end["t"], post_end["t"])
    else:
        built = first("sdk.runsync<", handler_end["t"])
        serialised = first("sdk.serialize_response<", built["t"])  # FastAPI: pydantic straight to JSON bytes
        memory["peak until the SDK has built the answer"] = peak(handler_end["t"], built["t"])
        memory["peak while FastAPI serialises it"] = peak(built["t"], serialised["t"])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


MODES = (("platform", "platform mode (job-take → job-done)", PLATFORM_SEGMENTS),
         ("runsync", "`--rp_serve_api` POST /runsync", RUNSYNC_SEGMENTS))
COLUMNS = [(side, batch) for batch in (1, 8) for side in SIDES]


def _group(records: list[JobRecord], mode: str) -> dict[tuple[str, int], list[JobRecord]]:
    return {(side, batch): [r for r in records if r.side == side and r.mode == mode and r.batch == batch]
            for side, batch in COLUMNS}


def time_tables(records: list[JobRecord], rounds: int) -> str:
    parts = []
    header = "| segment | " + " | ".join(f"{side}, {'one image' if b == 1 else 'eight images'}" for side, b in COLUMNS) + " |"
    for mode, label, segments in MODES:
        group = _group(records, mode)
        rows = [header, "| --- |" + " --- |" * len(COLUMNS)]
        for name, _, _ in segments:
            rows.append(f"| {name} | " + " | ".join(f"{median([r.segments_ms[name] for r in group[c]]):.1f}" for c in COLUMNS) + " |")
        rows.append("| **overhead (median of the totals)** | " +
                    " | ".join(f"**{median([r.overhead_ms for r in group[c]]):.0f}**" for c in COLUMNS) + " |")
        for name in sorted({name for r in records for name in r.counts}):
            rows.append(f"| {name}, median | " + " | ".join(f"{median([r.counts[name] for r in group[c]]):.0f}" for c in COLUMNS) + " |")
        parts.append(f"**{label}**, ms, medians of {rounds} jobs:\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def memory_tables(records: list[JobRecord], rounds: int) -> str:
    parts = []
    for mode, label, _ in MODES:
        group = _group(records, mode)
        names = list(dict.fromkeys(name for r in group[("ours", 8)] for name in r.memory_mib))
        rows = ["| eight images, Python's live bytes above those when the SDK got the job | " + " | ".join(SIDES) + " |",
                "| --- |" + " --- |" * len(SIDES)]
        for name in names:
            cells = []
            for side in SIDES:
                mib = [r.memory_mib[name] for r in group[(side, 8)]]
                times = [r.memory_mib[name] * 2**20 / r.result_bytes for r in group[(side, 8)]]
                cells.append(f"{median(mib):.0f} MiB ({median(times):.2f}×)")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        parts.append(f"**{label}**, medians of {rounds} jobs (× = multiples of the job-done body / answer):\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def report(records: list[JobRecord], rounds: int, when: str, no_write: bool, memory: bool) -> None:
    if memory:
        title = "Where the memory goes on the SDK's path"
        body = f"""
Command: `.venv/bin/python bench/bench_sdk_timeline.py --tracemalloc --worker-comfyui <checkout>` (`--rounds {rounds}`;
run on {when}). As "Where the time goes on the SDK's path", with tracemalloc on in both workers: at every
step, the bytes Python holds (all threads: str, bytes, bytearray buffers) and their peak since the step
before, minus what it held when the SDK received the job. Live bytes, not RSS: a heap that keeps freed
pages from an earlier job shows no RSS growth for them, which hides where the bytes are.

{memory_tables(records, rounds)}
"""
    else:
        title = "Where the time goes on the SDK's path"
        body = f"""
Command: `.venv/bin/python bench/bench_sdk_timeline.py --worker-comfyui <checkout>` (`--rounds {rounds}`; run on {when}).
The same workers, workloads and interleaved schedule as "Results through the SDK", each worker started through
`bench/sdk_timeline.py`, which timestamps the SDK's steps and the handler's stages inside the worker process
(monotonic clock, shared with the emulator's job-take and job-done stamps; about 20 µs a stamp). Each job's
measured time is cut into consecutive segments that add up to its overhead (ComfyUI's execution is the one
part left out); medians per segment, so a column's segments need not add up to its median overhead.

{time_tables(records, rounds)}
"""
    print(body)
    if not no_write:
        write_section(title, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker-comfyui", type=Path, help="a checkout of runpod-workers/worker-comfyui")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tracemalloc", action="store_true", help="where the memory goes (times from this run are not used)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--report-only", action="store_true", help="report again from the last run's saved records")
    args = parser.parse_args()
    saved_path = SAVED.with_name(f"{SAVED.stem}{'-memory' if args.tracemalloc else ''}.json")
    if not args.report_only:
        if args.worker_comfyui is None or not (args.worker_comfyui / "handler.py").exists():
            parser.error("give --worker-comfyui PATH, a checkout of runpod-workers/worker-comfyui")
        TimelineBench.tracemalloc = args.tracemalloc
        records: list[JobRecord] = []
        measure(TimelineBench, args.worker_comfyui.resolve(), args.rounds, record_sample(records))
        for side in SIDES:  # the timelines are kept beside the records, for --report-only
            for mode in ("platform", "runsync"):
                timeline_path(side, mode).replace(saved_path.with_name(f"{saved_path.stem}-{side}-{mode}.jsonl"))
        saved_path.write_text(json.dumps({"rounds": args.rounds, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                          "records": [record.__dict__ for record in records]}, indent=1))
    saved = json.loads(saved_path.read_text())
    records = [JobRecord(**{**r, "span": tuple(r["span"]), "execution": tuple(r["execution"]),
                            "segments_ms": {}, "memory_mib": {}, "counts": {}}) for r in saved["records"]]
    lines = {(side, mode): read_timeline(saved_path.with_name(f"{saved_path.stem}-{side}-{mode}.jsonl"))
             for side in SIDES for mode in ("platform", "runsync")}
    for record in records:
        analyse(record, lines[(record.side, record.mode)])
    report(records, saved["rounds"], saved["when"], args.no_write, args.tracemalloc)


if __name__ == "__main__":
    main()
