"""Files a prompt writes leave the worker's disk even when they are not delivered."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_handler, unique_color


def listed_files(worker, prompt_id: str) -> list[Path]:
    """Every file ComfyUI's history lists for the prompt, as a path on this machine."""
    history = worker.RUNTIME.client.history(prompt_id) or {}
    root = Path(worker.SETTINGS.comfy_path)
    return [
        root / item["type"] / item.get("subfolder", "") / item["filename"]
        for node in history.get("outputs", {}).values()
        for items in node.values() if isinstance(items, list)
        for item in items if isinstance(item, dict) and "filename" in item
    ]


def test_preview_images_are_removed_when_temp_outputs_are_not_asked_for(worker):
    color = unique_color()
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/kept"}},
    }

    result = run_handler(worker, {"workflow": workflow})

    assert "error" not in result, result
    assert [o["class_type"] for o in result["outputs"]] == ["SaveImage"]  # the preview was not delivered
    written = listed_files(worker, result["prompt_id"])
    root = Path(worker.SETTINGS.comfy_path)
    assert any(p.relative_to(root).parts[0] == "temp" for p in written)  # a preview was written
    assert [p for p in written if p.exists()] == []


def test_files_of_a_prompt_that_timed_out_are_removed(worker):
    color = unique_color()
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/before-timeout"}},
        "4": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 30}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "media/never"}},
    }

    result = run_handler(worker, {"workflow": workflow, "timeout_s": 2})

    assert result["error_type"] == "timeout", result
    written = listed_files(worker, result["details"]["prompt_id"])
    assert any(p.name.startswith("before-timeout") for p in written)  # node 3 ran and saved before the timeout
    assert [p for p in written if p.exists()] == []
