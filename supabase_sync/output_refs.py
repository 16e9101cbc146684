"""Outputs of one task as inputs of another: `{"from_task": "<uuid>", "output": 0}`.

Such a reference may stand anywhere in a task's params where a URL goes (a template's
media argument, `inputs[].url`, the seed's `video_url`, a URL field of a node). The task
depends on the referenced task (the database adds it to `depends_on` at insert), so by the
time the task is submitted the dependency is complete; the dispatcher then replaces each
reference with the URL of that output, read from the dependency's row by
`dependency_outputs()` (0080_pipelines.sql).

`output` picks the file: an integer is an index into the dependency's
`result.output.outputs` (the worker's stable order: nodes by id, then key, then item); a
string is a node id (that node's first output with a URL); left out, it means the
dependency's `output_url` (its first file output).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterator
from uuid import UUID

if TYPE_CHECKING:  # the store imports the supabase client; references are plain data
    from supabase_sync.store import DependencyOutput

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
REF_KEYS = frozenset({"from_task", "output"})


def is_ref(value: Any) -> bool:
    """Whether a value is meant as an output reference (an object with `from_task`)."""
    return isinstance(value, dict) and "from_task" in value


def ref_problem(value: dict[str, Any]) -> str | None:
    """What is wrong with the shape of a reference, or None."""
    extra = sorted(set(value) - REF_KEYS)
    if extra:
        return f"an output reference takes only from_task and output, not {', '.join(extra)}"
    task = value.get("from_task")
    if not isinstance(task, str) or not _UUID.match(task):
        return f"from_task must be a task id (a UUID), not {_show(task)}"
    if "output" in value:
        output = value["output"]
        if isinstance(output, bool) or not (
            (isinstance(output, int) and output >= 0) or (isinstance(output, str) and output)
        ):
            return f"output must be an index (0, 1, ...) or a node id, not {_show(output)}"
    return None


def find_refs(value: Any, path: str = "params") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every output reference in a JSON value, with where it is (`params.args.image_url`)."""
    if is_ref(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from find_refs(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from find_refs(item, f"{path}[{index}]")


def referenced_tasks(value: Any) -> set[UUID]:
    """The task ids that well-formed references in a value point at."""
    return {UUID(ref["from_task"]) for _, ref in find_refs(value) if ref_problem(ref) is None}


def resolve_refs(value: Any, outputs: dict[UUID, DependencyOutput], path: str = "params") -> tuple[Any, list[str]]:
    """The value with every reference replaced by its URL, and every problem found.

    A reference that cannot be resolved stays in place, and its problem names where it is.
    `outputs` holds the dependency_outputs() rows of this task, by dependency id.
    """
    problems: list[str] = []

    def walk(item: Any, where: str) -> Any:
        if is_ref(item):
            url, problem = _resolve_one(item, outputs)
            if problem:
                problems.append(f"{where}: {problem}")
                return item
            return url
        if isinstance(item, dict):
            return {key: walk(sub, f"{where}.{key}") for key, sub in item.items()}
        if isinstance(item, list):
            return [walk(sub, f"{where}[{index}]") for index, sub in enumerate(item)]
        return item

    return walk(value, path), problems


def _resolve_one(ref: dict[str, Any], outputs: dict[UUID, DependencyOutput]) -> tuple[str | None, str | None]:
    shape = ref_problem(ref)
    if shape:
        return None, shape
    task_id = UUID(ref["from_task"])
    dep = outputs.get(task_id)
    if dep is None or dep.status is None:
        return None, f"task {task_id} does not exist"
    if not dep.declared:
        return None, f"task {task_id} is not among this task's depends_on, so it may not have finished"
    if dep.status != "complete":
        return None, f"task {task_id} is {dep.status}, not complete"
    if "output" not in ref:
        if not dep.output_url:
            return None, f"task {task_id} has no output URL{_INLINE_HINT}"
        return dep.output_url, None
    wanted = ref["output"]
    if isinstance(wanted, int):
        if not dep.outputs and wanted == 0 and dep.output_url:
            return dep.output_url, None  # a worker without an outputs list: its output_url is output 0
        if wanted >= len(dep.outputs):
            return None, f"task {task_id} has {len(dep.outputs)} outputs; there is no output {wanted}"
        item = dep.outputs[wanted]
        if not isinstance(item.get("url"), str) or not item["url"]:
            return None, f"output {wanted} of task {task_id} ({item.get('kind') or 'no kind'}) has no URL{_INLINE_HINT}"
        return item["url"], None
    with_url = [item for item in dep.outputs if isinstance(item.get("url"), str) and item["url"]]
    for item in with_url:
        if str(item.get("node_id")) == wanted:
            return item["url"], None
    nodes = sorted({str(item.get("node_id")) for item in with_url})
    return None, (f"task {task_id} has no output with a URL from node {wanted!r} "
                  f"(nodes with one: {', '.join(nodes) if nodes else 'none'})")


_INLINE_HINT = " (its files were returned inline, not uploaded: give its route an `output` upload)"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
