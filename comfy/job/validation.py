"""Check an API-format graph against ComfyUI's /object_info before queueing it.

ComfyUI's own check stops at the first broken node class and says little about links;
this one lists every problem at once, each with node id and class type. Values that
ComfyUI checks against live data (combo lists such as file names in input/) are left to
ComfyUI, whose 400 answer is turned into a structured error too.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from comfy.errors import InvalidWorkflow


class GraphProblem(BaseModel):
    """One thing wrong with the graph."""

    node_id: str
    class_type: str | None
    input_name: str | None = None
    message: str

    def describe(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input_name:
            where += f" input '{self.input_name}'"
        return f"{where}: {self.message}"


def _is_link(value: Any) -> bool:
    """ComfyUI's own rule: [node_id as a string, output index]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def find_cycle(graph: dict[str, Any]) -> list[str] | None:
    """The node ids of one cycle of links (`[a, b, ..., a]`), or None when the graph has none.

    Iterative depth-first search: a graph of any size or depth cannot overflow the stack.
    """
    sources = {
        node_id: [str(value[0]) for value in (node.get("inputs") or {}).values()
                  if _is_link(value) and str(value[0]) in graph]
        for node_id, node in graph.items() if isinstance(node, dict)
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sources:
        if start in state:
            continue
        path = [start]
        iterators = [iter(sources[start])]
        state[start] = 1
        while iterators:
            following = next(iterators[-1], None)
            if following is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif following not in state and following in sources:
                state[following] = 1
                path.append(following)
                iterators.append(iter(sources[following]))
    return None


def _types_compatible(produced: Any, expected: Any) -> bool:
    if not isinstance(produced, str) or not isinstance(expected, str):
        return True  # combo lists and other shapes: leave to ComfyUI
    if "*" in (produced, expected) or "COMBO" in (produced, expected):
        return True
    return bool({t.strip() for t in produced.split(",")} & {t.strip() for t in expected.split(",")})


def _check_number(kind: str, value: Any, options: dict[str, Any]) -> str | None:
    if isinstance(value, bool):
        return f"expected {kind}, got a boolean"
    try:
        number = int(value) if kind == "INT" else float(value)
    except (TypeError, ValueError):
        return f"expected {kind}, got {value!r}"
    low, high = options.get("min"), options.get("max")
    if isinstance(low, (int, float)) and number < low:
        return f"{number} is below the minimum {low}"
    if isinstance(high, (int, float)) and number > high:
        return f"{number} is above the maximum {high}"
    return None


def find_problems(
    graph: dict[str, Any], object_info: dict[str, Any], explain_unknown: Callable[[str], str | None] | None = None,
) -> list[GraphProblem]:
    """Every problem of the graph, in node order. Empty when it looks runnable.

    explain_unknown(class_type) may say why a class is missing (a custom node that failed).
    """
    problems: list[GraphProblem] = []
    has_output_node = False
    for node_id, node in graph.items():
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if info is None:
            why = explain_unknown(class_type) if explain_unknown is not None else None
            problems.append(GraphProblem(
                node_id=node_id, class_type=class_type,
                message=f"unknown node class '{class_type}' ({why or 'not installed in this ComfyUI'})",
            ))
            continue
        has_output_node = has_output_node or bool(info.get("output_node"))
        inputs = node.get("inputs", {})
        declared = info.get("input", {})
        required = declared.get("required", {}) or {}
        specs = {**(declared.get("optional", {}) or {}), **required}
        for name in required:
            if name not in inputs:
                problems.append(GraphProblem(
                    node_id=node_id, class_type=class_type, input_name=name, message="required input is missing"
                ))
        for name, value in inputs.items():
            spec = specs.get(name)
            expected = spec[0] if isinstance(spec, list) and spec else None
            options = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            if _is_link(value):
                source_id = str(value[0])
                source = graph.get(source_id)
                if source is None:
                    problems.append(GraphProblem(
                        node_id=node_id, class_type=class_type, input_name=name,
                        message=f"linked to node {source_id}, which is not in the workflow",
                    ))
                    continue
                source_info = object_info.get(source.get("class_type"))
                if source_info is None:
                    continue  # already reported as unknown
                outputs = source_info.get("output", [])
                index = int(value[1])
                if index != value[1] or index < 0 or index >= len(outputs):
                    problems.append(GraphProblem(
                        node_id=node_id, class_type=class_type, input_name=name,
                        message=f"linked to output {value[1]} of node {source_id} ({source['class_type']}), "
                        f"which has {len(outputs)} output(s)",
                    ))
                elif expected is not None and not _types_compatible(outputs[index], expected):
                    problems.append(GraphProblem(
                        node_id=node_id, class_type=class_type, input_name=name,
                        message=f"expects {expected} but node {source_id} ({source['class_type']}) "
                        f"output {index} gives {outputs[index]}",
                    ))
            elif expected in ("INT", "FLOAT"):
                error = _check_number(expected, value, options)
                if error:
                    problems.append(GraphProblem(
                        node_id=node_id, class_type=class_type, input_name=name, message=error
                    ))
    if graph and not has_output_node and not any(p.message.startswith("unknown node class") for p in problems):
        problems.append(GraphProblem(
            node_id="-", class_type=None,
            message="the workflow has no output node (such as SaveImage or SaveVideo), so it would produce nothing",
        ))
    return problems


def validate_graph(
    graph: dict[str, Any], object_info: dict[str, Any], explain_unknown: Callable[[str], str | None] | None = None,
) -> None:
    """Raise InvalidWorkflow listing every problem, or return when there is none."""
    problems = find_problems(graph, object_info, explain_unknown)
    if problems:
        raise InvalidWorkflow(
            f"the workflow has {len(problems)} problem(s): " + "; ".join(p.describe() for p in problems),
            details=[p.model_dump() for p in problems],
        )
