"""Property-based fuzzing of the job input through the real handler and the CPU ComfyUI.

Any JSON value, and any mutation of a valid job, ends with a result: a success, or an
`error` whose `error_type` is never `internal`; never a hang; nothing left in ComfyUI's
folders; and the next valid job still succeeds.

The number of examples is bounded (and the examples fixed, `derandomize`) so CI stays
inside its budget; `FUZZ_EXAMPLES=N` (bench/fuzz_job_input.py) runs N fresh random examples
of each property instead.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import b64, empty_image_graph, png_bytes, run_handler, unique_color

EXAMPLE_LIMIT_S = 60.0  # one example: generous on a shared 2-core machine; a hang is far longer
LONG_RUN = int(os.environ.get("FUZZ_EXAMPLES", "0"))  # 0: CI's bounded, fixed examples
FUZZ_SETTINGS = dict(deadline=None, database=None, derandomize=not LONG_RUN, print_blob=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON as Python's json module reads it: NaN and Infinity included, on purpose. Integers stay
# small so that a mutated width or batch size cannot ask a 2-core machine for gigabytes.
scalars = (st.none() | st.booleans() | st.integers(-64, 64) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def valid_job() -> dict[str, Any]:
    workflow = empty_image_graph("fuzz/out", color=unique_color())
    workflow["4"] = {"class_type": "LoadImage", "inputs": {"image": "fuzz.png"}}
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "fuzz/in"}}
    return {"workflow": workflow, "images": [{"name": "fuzz.png", "image": b64(png_bytes(2, 2))}], "timeout_s": 30}


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into a job: keys of objects, indexes of arrays."""
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, path + (index,))
    return found


@st.composite
def mutated_jobs(draw) -> dict[str, Any]:
    job = valid_job()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(job)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            job = draw(json_values) if action == "replace" else job
            continue
        parent = job
        for step in path[:-1]:
            parent = parent[step]
        if not isinstance(parent, (dict, list)):
            continue
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.insert(last, draw(json_values))
        if not isinstance(job, dict):
            break
    return job


def _check(worker, job_input: Any, may_succeed: bool) -> None:
    started = time.monotonic()
    result = run_handler(worker, copy.deepcopy(job_input))
    assert time.monotonic() - started < EXAMPLE_LIMIT_S, "the job took far too long"
    assert isinstance(result, dict)
    if "error" in result or not may_succeed:
        assert isinstance(result.get("error"), str) and result["error"], result
        assert result.get("error_type") not in (None, "internal"), result
    queue = worker.RUNTIME.client.queue()
    assert queue["queue_running"] == [] and queue["queue_pending"] == []  # ComfyUI is left idle


def _folder_files(worker) -> tuple[list[str], list[Path]]:
    comfy = Path(worker.SETTINGS.comfy_path)
    fuzz_out = comfy / "output" / "fuzz"
    return (sorted(p.name for p in (comfy / "input").iterdir() if p.is_file()),
            [p for p in fuzz_out.rglob("*") if p.is_file()] if fuzz_out.exists() else [])


def _assert_next_job_succeeds(worker) -> None:
    result = run_handler(worker, valid_job())
    assert "error" not in result, result


def test_any_json_value_as_the_job_input_is_refused_cleanly(worker):
    @settings(max_examples=LONG_RUN or 250, **FUZZ_SETTINGS)
    @given(json_values | st.dictionaries(st.sampled_from(list(valid_job()) + ["inputs", "output", "task_id"]),
                                         json_values, max_size=4))
    def check(job_input):
        _check(worker, job_input, may_succeed=False)

    check()
    _assert_next_job_succeeds(worker)


def test_mutations_of_a_valid_job_never_fail_as_internal_and_leave_nothing_behind(worker):
    worker.RUNTIME.client.object_info()  # its first call makes input/3d: not a job's doing
    inputs_before, _ = _folder_files(worker)

    @settings(max_examples=LONG_RUN or 80, **FUZZ_SETTINGS)
    @given(mutated_jobs())
    def check(job_input):
        _check(worker, job_input, may_succeed=True)

    check()
    _assert_next_job_succeeds(worker)
    assert _folder_files(worker) == (inputs_before, [])
