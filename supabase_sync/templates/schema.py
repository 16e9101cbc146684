"""A template's arguments as JSON Schema (draft 2020-12), for client code generation.

The schema accepts exactly what the dispatcher accepts (tests check the two agree), with
one caveat: `pattern` is searched with Python's `regex` module, so keep patterns to the
syntax Python and ECMAScript share.
"""

from __future__ import annotations

from typing import Any

from supabase_sync.templates.args import MAX_URL_LENGTH
from supabase_sync.templates.spec import Parameter, Template

DRAFT = "https://json-schema.org/draft/2020-12/schema"
FROM_TASK = {
    "type": "object",
    "description": "the output of a task this one depends on: `output` is an index into its outputs or a node id; "
                   "left out, its output_url",
    "required": ["from_task"],
    "additionalProperties": False,
    "properties": {
        "from_task": {"type": "string", "format": "uuid",
                      "pattern": "^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"},
        "output": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "minLength": 1}]},
    },
}


def json_schema(template: Template) -> dict[str, Any]:
    """The JSON Schema of the template's `args` object."""
    properties = {name: _parameter_schema(p) for name, p in template.parameters.items()}
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "title": f"{template.name}@{template.version}",
        "description": template.description,
        "type": "object",
        "properties": properties,
        "required": [name for name, p in template.parameters.items() if p.required],
        "additionalProperties": False,
    }
    if any(p.type == "media" for p in template.parameters.values()):
        schema["$defs"] = {"from_task": FROM_TASK}
    return schema


def _parameter_schema(parameter: Parameter) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if parameter.description:
        schema["description"] = parameter.description
    kind = parameter.type
    if kind in ("int", "float"):
        schema["type"] = "integer" if kind == "int" else "number"
        if parameter.minimum is not None:
            schema["minimum"] = parameter.minimum
        if parameter.maximum is not None:
            schema["maximum"] = parameter.maximum
    elif kind == "string":
        schema["type"] = "string"
        for ours, theirs in (("min_length", "minLength"), ("max_length", "maxLength"), ("pattern", "pattern")):
            if getattr(parameter, ours) is not None:
                schema[theirs] = getattr(parameter, ours)
    elif kind == "bool":
        schema["type"] = "boolean"
    elif kind == "enum":
        schema["enum"] = list(parameter.values or [])
    else:
        schema["x-media-kind"] = parameter.kind
        schema["oneOf"] = [
            {"type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/]+", "maxLength": MAX_URL_LENGTH},
            {"$ref": "#/$defs/from_task"},
        ]
    if not parameter.required:
        schema["default"] = parameter.default
    return schema
