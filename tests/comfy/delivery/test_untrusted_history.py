"""/history is what nodes reported: an entry pointing outside ComfyUI's folders is refused and
never read, and clean-up removes only the files and folders the run itself created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import empty_image_graph, file_bytes, run_handler, unique_color


def _reporting(filename: str, subfolder: str = "", folder_type: str = "output") -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "TestReportFile",
              "inputs": {"filename": filename, "subfolder": subfolder, "folder_type": folder_type}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "history/real"}},
    }


@pytest.mark.parametrize("filename, subfolder, folder_type", [
    ("hostname", "", "../../../../etc"),  # a folder type that is a path
    ("hostname", "", "models"),  # a folder type ComfyUI has, but not one for outputs
    ("hostname", "../../../../../etc", "output"),
    ("../../../../../etc/hostname", "", "temp"),
    ("/etc/hostname", "", "output"),
])
def test_an_output_outside_comfyuis_folders_is_refused_naming_the_node(worker, filename, subfolder, folder_type):
    result = run_handler(worker, {"workflow": _reporting(filename, subfolder, folder_type)})

    assert result["error_type"] == "output_error", result
    assert result["error"].startswith("node 2 (TestReportFile) reported an output that is ")
    assert "refused, nothing was read" in result["error"]
    assert "outputs" not in result and "images" not in result
    assert not list((Path(worker.SETTINGS.comfy_path) / "output" / "history").glob("real_*"))  # the rest cleaned up


def test_a_symlink_out_of_the_output_folder_is_refused(worker):
    link = Path(worker.SETTINGS.comfy_path) / "output" / "escape"
    link.symlink_to("/etc")
    try:
        result = run_handler(worker, {"workflow": _reporting("hostname", "escape")})
    finally:
        link.unlink()

    assert result["error_type"] == "output_error", result
    assert "outside ComfyUI's output folder" in result["error"]
    assert Path("/etc/hostname").exists()


def test_files_a_node_reports_but_the_run_did_not_write_are_delivered_and_kept(worker):
    comfy = Path(worker.SETTINGS.comfy_path)
    operator_output = comfy / "output" / "operator-keep.png"
    operator_output.write_bytes(b"\x89PNG operator's own")
    workflow = _reporting("operator-keep.png")
    workflow["4"] = {"class_type": "TestReportFile",
                     "inputs": {"filename": "example.png", "subfolder": "", "folder_type": "input"}}
    try:
        result = run_handler(worker, {"workflow": workflow})

        assert "error" not in result, result
        reported = {o["filename"]: o for o in result["outputs"]}
        assert file_bytes(result, reported["operator-keep.png"]) == b"\x89PNG operator's own"
        assert reported["example.png"]["folder_type"] == "input"
        assert operator_output.exists()  # it was there before the prompt: not the run's to remove
        assert (comfy / "input" / "example.png").exists()
        assert not list((comfy / "output" / "history").glob("real_*"))  # what the run wrote is gone
    finally:
        operator_output.unlink(missing_ok=True)


def test_folders_a_filename_prefix_created_go_and_existing_ones_stay(worker):
    output = Path(worker.SETTINGS.comfy_path) / "output"
    kept = output / "operator-folder"
    kept.mkdir(exist_ok=True)
    (kept / "notes.txt").write_text("keep me")
    workflow = empty_image_graph(save_prefix="made/by/the/job/out", color=unique_color())
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "operator-folder/out"}}
    try:
        result = run_handler(worker, {"workflow": workflow})

        assert "error" not in result, result
        assert not (output / "made").exists()
        assert sorted(os.listdir(kept)) == ["notes.txt"]
    finally:
        (kept / "notes.txt").unlink()
        kept.rmdir()
