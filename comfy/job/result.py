"""What a job hands to the RunPod SDK: a plain dict, except for its repr.

runpod 1.12's job loop formats the handler's return value into two debug f-strings
(`f"Handler output: {job_output}"`, `f"run_job return: {run_result}"`) whatever the log level,
and its local mode logs `f"Job result: {job_result}"`. With a plain dict each of those is a
repr of every base64 string: about 220 ms and two extra copies for a 33 MB result, spent before
the result is even serialised. `JobResult` is a dict subclass, so json.dumps, FastAPI's
jsonable_encoder and pydantic see exactly the same data and produce the same JSON; only
repr/str differ: the same structure with long strings shown by their length, cut after a few
KB (the SDK cuts log lines at 4 KB anyway). The SDK itself is not patched.
"""

from __future__ import annotations

from typing import Any

REPR_MAX_CHARS = 3000  # the SDK keeps 4096 characters of a log line, prefix included
REPR_STRING_CHARS = 1000  # longer strings (long texts) appear as <N chars>...
REPR_DATA_CHARS = 64  # ...and so does any `data` longer than this (base64, URLs stay readable below it)
REPR_LIST_ITEMS = 20  # then "... N more", so a long list does not hide the keys after it


class JobResult(dict):
    """The handler's result; `repr()` shows its structure without the bulk."""

    def __repr__(self) -> str:
        return brief(self)

    __str__ = __repr__


def brief(value: Any, limit: int = REPR_MAX_CHARS) -> str:
    """A repr of `value` with long strings elided, at most about `limit` characters."""
    parts: list[str] = []
    _write(value, parts, [limit])
    return "".join(parts)


def _write(value: Any, parts: list[str], left: list[int], key: Any = None) -> None:
    if left[0] <= 0:
        return
    if isinstance(value, str):
        longest = REPR_DATA_CHARS if key == "data" else REPR_STRING_CHARS
        text = repr(value) if len(value) <= longest else f"<{len(value)} chars>"
    elif isinstance(value, dict):
        _items(parts, left, "{", "}", list(value.items()), lambda kv: (repr(kv[0]) + ": ", kv[1], kv[0]))
        return
    elif isinstance(value, (list, tuple)):
        _items(parts, left, "[", "]", list(value), lambda item: ("", item, None))
        return
    else:
        text = repr(value)
    parts.append(text)
    left[0] -= len(text)


def _items(parts: list[str], left: list[int], opening: str, closing: str, items: list, split) -> None:
    parts.append(opening)
    left[0] -= 1
    for index, item in enumerate(items):
        if left[0] <= 0 or (opening == "[" and index == REPR_LIST_ITEMS):
            parts.append(f"{', ' if index else ''}... {len(items) - index} more")
            break
        prefix, inner, key = split(item)
        parts.append((", " if index else "") + prefix)
        left[0] -= len(prefix) + 2
        _write(inner, parts, left, key)
    parts.append(closing)
