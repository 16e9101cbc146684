"""worker-comfyui `images` are staged under per-job names: an operator's files in input/ are
never overwritten or removed, and concurrent jobs never see each other's images."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from pathlib import Path

from comfy.job.run import run_job
from comfy.server.runtime import WorkerRuntime
from tests.conftest import b64, file_bytes, png_bytes, run_handler, unique_color


def _load_invert_save(image_name: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def _colour_of(result: dict, index: int = 0) -> tuple[int, int, int]:
    from PIL import Image

    data = file_bytes(result, result["outputs"][index])
    return Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))


def _is(colour: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    """Equal to within 1 per channel (ComfyUI's round trip through floats)."""
    return all(abs(a - b) <= 1 for a, b in zip(colour, expected))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_image_named_like_an_operators_file_neither_replaces_nor_removes_it(worker):
    input_dir = Path(worker.SETTINGS.comfy_path) / "input"
    operator_file = input_dir / "example.png"  # ComfyUI ships it
    assert operator_file.is_file()
    worker.RUNTIME.client.object_info()  # its first call makes input/3d (ComfyUI's Load3D): not the job's doing
    before_digest, before_names = _digest(operator_file), sorted(p.name for p in input_dir.iterdir())
    workflow = _load_invert_save("example.png", "staging/out")
    # ComfyUI's annotated form names the same file: it is pointed at the job's copy too.
    workflow["4"] = {"class_type": "LoadImage", "inputs": {"image": "example.png [input]"}}
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "staging/annotated"}}

    result = run_handler(worker, {"workflow": workflow,
                                  "images": [{"name": "example.png", "image": b64(png_bytes(color=(200, 30, 30)))}]})

    assert "error" not in result, result
    assert _is(_colour_of(result), (55, 225, 225))  # the job's red image, inverted: not ComfyUI's example
    assert [o["node_id"] for o in result["outputs"]] == ["3", "5"]
    assert _is(_colour_of(result, 1), (200, 30, 30))  # "example.png [input]": the job's image as well
    assert _digest(operator_file) == before_digest  # not overwritten...
    assert sorted(p.name for p in input_dir.iterdir()) == before_names  # ...not removed; the job's copy is gone


def test_an_image_named_like_a_folder_in_input_is_staged_beside_it(worker):
    folder = Path(worker.SETTINGS.comfy_path) / "input" / "frames"
    folder.mkdir(exist_ok=True)
    (folder / "keep.txt").write_text("operator's")
    try:
        result = run_handler(worker, {"workflow": _load_invert_save("frames", "staging/folder"),
                                      "images": [{"name": "frames", "image": b64(png_bytes(color=(0, 0, 0)))}]})

        assert "error" not in result, result
        assert _is(_colour_of(result), (255, 255, 255))
        assert (folder / "keep.txt").read_text() == "operator's"
        assert not list(folder.parent.glob(".*.part"))  # no half-written file left
    finally:
        (folder / "keep.txt").unlink()
        folder.rmdir()


def test_two_jobs_at_once_each_see_their_own_image_of_the_same_name(worker):
    # Two workers attached to one ComfyUI (and its input folder): both stage "shared.png"
    # while a third job keeps ComfyUI busy, so both prompts wait in its queue together.
    settings = dataclasses.replace(worker.SETTINGS, comfy_url=worker.SETTINGS.base_url)
    runtimes = [WorkerRuntime(settings) for _ in range(3)]
    results: dict[str, dict] = {}
    blocker = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 2.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "staging/blocker"}},
    }
    jobs = {
        "blocker": (runtimes[0], {"workflow": blocker}),
        "red": (runtimes[1], {"workflow": _load_invert_save("shared.png", "staging/red"),
                              "images": [{"name": "shared.png", "image": b64(png_bytes(color=(255, 0, 0)))}]}),
        "blue": (runtimes[2], {"workflow": _load_invert_save("shared.png", "staging/blue"),
                               "images": [{"name": "shared.png", "image": b64(png_bytes(color=(0, 0, 255)))}]}),
    }
    threads = [threading.Thread(target=lambda n=name, r=rt, j=job: results.update({n: run_job(r, j, f"staging-{n}")}))
               for name, (rt, job) in jobs.items()]
    try:
        threads[0].start()
        threading.Event().wait(0.5)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for runtime in runtimes:
            runtime.shutdown()

    assert all("error" not in results[name] for name in jobs), results
    assert _is(_colour_of(results["red"]), (0, 255, 255))
    assert _is(_colour_of(results["blue"]), (255, 255, 0))
    assert not list((Path(worker.SETTINGS.comfy_path) / "input").glob("*shared.png"))
