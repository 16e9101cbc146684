"""A task's `args` checked against a template's parameters, every problem listed at once.

Types are strict: `"2"` is not an int, `1` is not a bool (JSON Schema's rules, so a client
validating with `templates schema` and the dispatcher agree). An int may be written 2.0.
"""

from __future__ import annotations

import math
import re
from typing import Any

import regex

from supabase_sync.output_refs import is_ref, ref_problem
from supabase_sync.templates.spec import Parameter, Template, TemplateError

URL = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)
MAX_URL_LENGTH = 8192
# A template's pattern meets the task's value here: a costly pattern (nested alternatives)
# against a hostile value must not stall the dispatcher's event loop. `regex` stops it.
PATTERN_TIMEOUT_S = 0.1


def check_value(parameter: Parameter, value: Any) -> tuple[Any, str | None]:
    """The value as it will be set (an int written 2.0 becomes 2), or what is wrong with it."""
    kind = parameter.type
    if kind == "int":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be an integer, not {_describe(value)}"
        return value, _range_problem(parameter, value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"must be a number, not {_describe(value)}"
        if not math.isfinite(value):
            return None, "must be a finite number"
        return float(value), _range_problem(parameter, value)
    if kind == "bool":
        if not isinstance(value, bool):
            return None, f"must be true or false, not {_describe(value)}"
        return value, None
    if kind == "string":
        if not isinstance(value, str):
            return None, f"must be a string, not {_describe(value)}"
        if parameter.min_length is not None and len(value) < parameter.min_length:
            return None, f"is {len(value)} characters long; at least {parameter.min_length}"
        if parameter.max_length is not None and len(value) > parameter.max_length:
            return None, f"is {len(value)} characters long; at most {parameter.max_length}"
        if parameter.pattern is not None:
            try:
                matched = regex.search(parameter.pattern, value, timeout=PATTERN_TIMEOUT_S)
            except TimeoutError:
                return None, (f"checking it against the pattern {parameter.pattern!r} took longer than "
                              f"{PATTERN_TIMEOUT_S} s (a pattern with nested repetition; fix the template)")
            if not matched:
                return None, f"{_describe(value)} does not match the pattern {parameter.pattern!r}"
        return value, None
    if kind == "enum":
        for allowed in parameter.values or []:
            if type(allowed) is type(value) and allowed == value or (
                isinstance(allowed, (int, float)) and isinstance(value, (int, float))
                and not isinstance(value, bool) and allowed == value
            ):
                return allowed, None
        return None, f"{_describe(value)} is not one of {', '.join(_show(v) for v in parameter.values or [])}"
    # media: an http(s) URL, or the output of a task this one depends on
    if is_ref(value):
        return value, ref_problem(value)
    if not isinstance(value, str):
        return None, (f"must be an http(s) URL or {{\"from_task\": \"<task id>\", \"output\": 0}}, "
                      f"not {_describe(value)}")
    if not URL.match(value):
        return None, f"{_describe(value)} is not an http or https URL"
    if len(value) > MAX_URL_LENGTH:
        return None, f"the URL is {len(value)} characters long; at most {MAX_URL_LENGTH}"
    return value, None


def check_args(template: Template, args: Any) -> dict[str, Any]:
    """Every parameter's value (the argument, else the default); TemplateError lists every problem."""
    subject = f"template {template.name}@{template.version}"
    if not isinstance(args, dict):
        raise TemplateError(subject, [f"args must be an object of arguments, not {_describe(args)}"])
    problems = []
    values: dict[str, Any] = {}
    known = ", ".join(template.parameters) or "none"
    for name in args:
        if name not in template.parameters:
            problems.append(f"args.{name}: unknown argument (this template takes: {known})")
    for name, parameter in template.parameters.items():
        if name not in args:
            if parameter.required:
                problems.append(f"args.{name}: required ({_kind_text(parameter)})")
            else:
                values[name] = parameter.default
            continue
        value, problem = check_value(parameter, args[name])
        if problem:
            problems.append(f"args.{name}: {problem}")
        else:
            values[name] = value
    if problems:
        raise TemplateError(subject, problems)
    return values


def _range_problem(parameter: Parameter, value: int | float) -> str | None:
    if parameter.minimum is not None and value < parameter.minimum:
        return f"{_show(value)} is below the minimum {_show(parameter.minimum)}"
    if parameter.maximum is not None and value > parameter.maximum:
        return f"{_show(value)} is above the maximum {_show(parameter.maximum)}"
    return None


def _kind_text(parameter: Parameter) -> str:
    if parameter.type == "media":
        return f"{parameter.kind} URL"
    if parameter.type == "enum":
        return "one of " + ", ".join(_show(v) for v in parameter.values or [])
    return {"int": "an integer", "float": "a number", "string": "a string", "bool": "true or false"}[parameter.type]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, (int, float)):
        return f"the number {_show(value)}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    text = repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
