"""What a job hands to the RunPod SDK: a plain dict, except for its repr.

runpod 1.12's job loop formats the handler's return value into two debug f-strings
(`f"Handler output: {job_output}"`, `f"run_job return: {run_result}"`) whatever the log level,
and its local mode logs `f"Job result: {job_result}"`. With a plain dict each of those is a
repr of every base64 string: about 220 ms and two extra copies for a 33 MB result, spent before
the result is even serialised. `JobResult` is a dict subclass, so json.dumps, FastAPI's
jsonable_encoder and pydantic see exactly the same data and produce the same JSON; only
repr/str give a one-line summary instead. The SDK itself is not patched.
"""

from __future__ import annotations

from typing import Any


class JobResult(dict):
    """The handler's result; `repr()` summarises it instead of printing every byte."""

    def __repr__(self) -> str:
        return describe(self)

    __str__ = __repr__


def describe(result: dict[str, Any]) -> str:
    """One line: the error, or how many files went where and how much base64 the result carries."""
    if "error" in result:
        return f"<job result: {result.get('error_type', 'error')}: {str(result['error'])[:200]}>"
    images = result.get("images") or []
    inline = [image for image in images if isinstance(image, dict) and image.get("type") == "base64"]
    b64_bytes = sum(len(image.get("data") or "") for image in inline)
    texts = sum(1 for entry in result.get("outputs") or [] if isinstance(entry, dict) and entry.get("kind") == "text")
    parts = [f"{len(images)} file{'s' if len(images) != 1 else ''} ({len(inline)} inline, {len(images) - len(inline)} stored)"]
    if texts:
        parts.append(f"{texts} text{'s' if texts != 1 else ''}")
    parts.append(f"{b64_bytes / 1e6:.1f} MB base64")
    if result.get("prompt_id"):
        parts.append(f"prompt {result['prompt_id']}")
    return f"<job result: {', '.join(parts)}>"
