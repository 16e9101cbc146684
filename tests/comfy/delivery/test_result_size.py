"""The result's size is known from metadata alone, and exactly: what the budget decides on is what RunPod gets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from comfy.delivery.budget import deliver_inline
from comfy.delivery.outputs import OutputFile, OutputKind
from comfy.delivery.result import RESERVE_BYTES, SizeModel, json_size
from comfy.delivery.storage import StoredFile
from comfy.errors import OutputTooLarge


def file_output(folder: Path, name: str, size: int, node: str = "9", subfolder: str = "") -> OutputFile:
    path = folder / name
    path.write_bytes(os.urandom(size))
    return OutputFile(node_id=node, class_type="SaveImage", key="images", kind=OutputKind.IMAGE, filename=name,
                      subfolder=subfolder, content_type="image/png", size_bytes=size, path=path)


def text_output(text: str, node: str = "5") -> OutputFile:
    return OutputFile(node_id=node, class_type="TestTextOutput", key="text", kind=OutputKind.TEXT,
                      content_type="text/plain", size_bytes=len(text.encode()), text=text)


def test_the_model_is_an_upper_bound_within_a_few_bytes_of_the_real_encoding(tmp_path):
    files = [file_output(tmp_path, f"f{i}.png", size, subfolder="sub" if i % 2 else "")
             for i, size in enumerate([0, 1, 2, 3, 1000, 65537])]
    files.append(text_output('quotes " and \\ and newlines\n and ünïcödé ✓'))

    result = deliver_inline(files, 10**9, None, "advice")

    predicted = SizeModel(files, 10**9, {}).total({})
    real = json_size(result)
    assert real <= predicted <= real + 64  # digits of images_index and the summary are counted at their widest


def test_stored_entries_are_measured_with_their_real_urls(tmp_path):
    files = [file_output(tmp_path, "a.png", 10), file_output(tmp_path, "b.png", 20)]
    stored = StoredFile(url="https://bucket.example/a.png?" + "X" * 900, storage_path="job/a.png", bucket="renders",
                        size_bytes=10, sha256="f" * 64, content_type="image/png")
    model = SizeModel(files, 10**9, {0: "job/a.png", 1: "job/b.png"})

    estimate = model.total({0: None}, "s3")
    exact = model.total({0: stored}, "s3")

    assert exact < estimate  # a 900-byte URL is within the allowance
    from comfy.delivery.result import InlineData, assemble
    inline = {1: InlineData(data="A" * 28, sha256="e" * 64)}
    assert json_size(assemble(files, inline, {0: stored}, "s3", 10**9)) <= exact


def test_over_budget_without_storage_is_decided_before_any_file_is_read(tmp_path):
    never_written = OutputFile(node_id="9", class_type="SaveImage", key="images", kind=OutputKind.IMAGE,
                               filename="huge.png", content_type="image/png", size_bytes=50_000_000,
                               path=tmp_path / "huge.png")  # reading it would raise FileNotFoundError

    with pytest.raises(OutputTooLarge) as caught:
        deliver_inline([never_written], 9_000_000, None, "configure storage: BUCKET_ENDPOINT_URL ...")

    error = caught.value
    assert error.error_type == "output_too_large"
    assert "RESULT_MAX_BYTES (9000000)" in error.message and "BUCKET_ENDPOINT_URL" in error.message
    assert error.details["result_bytes"] > 66_000_000  # 50 MB of base64 and more
    assert error.details["largest_outputs"][0] == {"node_id": "9", "filename": "huge.png", "kind": "image",
                                                   "size_bytes": 50_000_000}


def test_a_text_larger_than_the_budget_is_refused_without_encoding_it(tmp_path):
    text = text_output("x" * 2_000_000)

    with pytest.raises(OutputTooLarge) as caught:
        deliver_inline([text], 1_000_000, None, "advice")

    assert caught.value.details["result_bytes"] >= 2_000_000


def test_what_fits_is_returned_and_measures_under_the_budget(tmp_path):
    files = [file_output(tmp_path, f"f{i}.png", 30_000) for i in range(5)]
    budget = 5 * 40_000 + 4096

    result = deliver_inline(files, budget, None, "advice")

    assert len(json.dumps(result, ensure_ascii=False).encode()) <= budget - RESERVE_BYTES
    assert [entry["images_index"] for entry in result["outputs"]] == [0, 1, 2, 3, 4]
    assert result["delivery"] == {"inline_files": 5, "stored_files": 0, "storage": None, "result_max_bytes": budget}
