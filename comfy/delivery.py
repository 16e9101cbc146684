"""Hand the outputs back in the job result.

Inline delivery: every file as base64, in worker-comfyui's `images` list (every file,
not only images, so its clients keep working) and in the richer `outputs` list.
"""

from __future__ import annotations

from typing import Any

import pybase64

from comfy.outputs import OutputFile, OutputKind


def deliver_inline(files: list[OutputFile]) -> dict[str, Any]:
    """The result's `images` and `outputs` with file contents inline."""
    images: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for item in files:
        entry = item.model_dump(mode="json", exclude_none=True)
        if item.kind is not OutputKind.TEXT and item.path is not None:
            data = pybase64.b64encode_as_string(item.path.read_bytes())
            entry["data"] = data
            images.append({"filename": item.filename, "type": "base64", "data": data})
        outputs.append(entry)
    return {"images": images, "outputs": outputs}
