"""What a workflow template is: an API-format workflow plus a typed parameter spec.

```yaml
name: invert_image          # letters, digits, _ . -   (no @)
version: 1                  # a positive integer; `name` alone means the newest version
description: Invert the colours of an image.
parameters:
  image_url:
    type: media             # int | float | string | bool | enum | media (a file by URL)
    kind: image             # media: image | video | audio | file
    sets: "1.image"         # node.input, or a list of them, or {node: "1", field: image}
  scale:
    type: float
    default: 1.0            # no default: the argument is required
    minimum: 0.25
    maximum: 4
    sets: ["3.scale_by"]
workflow: { "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}}, ... }
```

Every problem of a template is found at once (`TemplateError.problems`). A parameter may
only set an input the workflow already has (with a placeholder or a default value), which
catches a misspelt input name here instead of ComfyUI silently ignoring it; and it may not
set an input that is a link to another node.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, NamedTuple

import regex

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError, field_validator,
                      model_validator)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VERSION = 1_000_000  # the workflow_templates table's limit too
MEDIA_KINDS = ("image", "video", "audio", "file")
ParameterType = Literal["int", "float", "string", "bool", "enum", "media"]


class TemplateError(ValueError):
    """A template (or a reference to one) is not valid; `problems` lists every reason."""

    def __init__(self, subject: str, problems: list[str]) -> None:
        self.subject = subject
        self.problems = problems
        super().__init__(f"{subject}: " + "; ".join(problems))


class TemplateRef(NamedTuple):
    """`name@version`, or `name` alone (version None: the newest)."""

    name: str
    version: int | None

    @classmethod
    def parse(cls, text: Any) -> "TemplateRef":
        if not isinstance(text, str) or not text:
            raise TemplateError("template", [f"must be a name or name@version, not {_short(text)}"])
        name, sep, version = text.partition("@")
        problems = []
        if not NAME.match(name):
            problems.append(f"{name!r} is not a template name (letters, digits, '_', '.', '-'; at most 100)")
        number = None
        if sep:
            if not re.fullmatch(r"[1-9][0-9]{0,6}", version) or int(version) > MAX_VERSION:
                problems.append(f"version {version!r} is not a whole number from 1 to {MAX_VERSION}")
            else:
                number = int(version)
        if problems:
            raise TemplateError(f"template {text!r}", problems)
        return cls(name, number)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


class Target(BaseModel):
    """One input a parameter sets: `workflow[node].inputs[field]`."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1)
    field: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # "3.scale_by": the node id is what comes before the first dot (ComfyUI's dynamic
        # inputs may have dots in their names; node ids of API-format workflows do not)
        if isinstance(value, str):
            node, dot, field = value.partition(".")
            if not dot or not node or not field:
                raise ValueError(f"{value!r} is not 'node.input' (for example '3.scale_by')")
            return {"node": node, "field": field}
        if isinstance(value, dict) and isinstance(value.get("node"), int) and not isinstance(value.get("node"), bool):
            return {**value, "node": str(value["node"])}
        return value

    def __str__(self) -> str:
        return f"{self.node}.{self.field}"


class Parameter(BaseModel):
    """One argument of a template: its type, default, constraints and the inputs it sets."""

    model_config = ConfigDict(extra="forbid")

    type: ParameterType
    description: str = ""
    default: Any = Field(default=None, description="left out: the argument is required")
    sets: list[Target] = Field(min_length=1)
    minimum: StrictInt | StrictFloat | None = Field(default=None, description="int, float")
    maximum: StrictInt | StrictFloat | None = Field(default=None, description="int, float")
    min_length: StrictInt | None = Field(default=None, ge=0, description="string")
    max_length: StrictInt | None = Field(default=None, ge=0, description="string")
    pattern: str | None = Field(default=None, description="string: a regular expression the value must contain a match of")
    values: list[StrictStr | StrictInt | StrictFloat] | None = Field(default=None, min_length=1, description="enum: the allowed values")
    kind: Literal["image", "video", "audio", "file"] | None = Field(default=None, description="media: what the file is")

    @field_validator("sets", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @field_validator("minimum", "maximum")
    @classmethod
    def _finite(cls, value: int | float | None) -> int | float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _constraints_fit_the_type(self) -> "Parameter":
        allowed = {
            "int": {"minimum", "maximum"}, "float": {"minimum", "maximum"},
            "string": {"min_length", "max_length", "pattern"}, "bool": set(),
            "enum": {"values"}, "media": {"kind"},
        }[self.type]
        given = {name for name in ("minimum", "maximum", "min_length", "max_length", "pattern", "values", "kind")
                 if getattr(self, name) is not None}
        problems = [f"{name} does not apply to type {self.type}" for name in sorted(given - allowed)]
        if self.type == "enum" and self.values is None:
            problems.append("type enum needs `values`, the allowed values")
        if self.values is not None and len({(type(v), v) for v in self.values}) != len(self.values):
            problems.append("enum values must be unique")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            problems.append(f"minimum {self.minimum:g} is above maximum {self.maximum:g}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            problems.append(f"min_length {self.min_length} is above max_length {self.max_length}")
        if self.pattern is not None:
            try:
                regex.compile(self.pattern)
            except regex.error as exc:
                problems.append(f"pattern is not a valid regular expression ({exc})")
        if self.type == "media" and self.kind is None:
            self.kind = "file"
        if problems:
            raise ValueError("; ".join(problems))
        if not self.required:
            # a default must itself be a valid argument (import here: args imports this module)
            from supabase_sync.templates.args import check_value

            _, problem = check_value(self, self.default)
            if problem:
                raise ValueError(f"default {_short(self.default)}: {problem}")
        return self


class Template(BaseModel):
    """A workflow template: one version of one name."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1, le=MAX_VERSION)
    description: str = ""
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    workflow: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not a template name (letters, digits, '_', '.', '-'; no '@'; at most 100)")
        return value


def load_template(data: Any, subject: str) -> Template:
    """A Template from parsed JSON/YAML, or TemplateError listing every problem found.

    Each parameter is checked on its own, so one bad parameter does not hide the others'
    problems; the inputs they set are checked against the workflow once all are read.
    """
    if not isinstance(data, dict):
        raise TemplateError(subject, [f"must be an object with name, version, parameters and workflow, not {_short(data)}"])
    problems: list[str] = []
    raw_parameters = data.get("parameters", {})
    try:
        bare = Template.model_validate({**data, "parameters": {}})
    except ValidationError as exc:
        bare = None
        problems += [_pydantic_problem(err) for err in exc.errors(include_url=False)]
    parameters: dict[str, Parameter] = {}
    if not isinstance(raw_parameters, dict):
        problems.append(f"parameters: must be an object of named parameters, not {_short(raw_parameters)}")
        raw_parameters = {}
    for name, raw in raw_parameters.items():
        try:
            parameters[str(name)] = Parameter.model_validate(raw)
        except ValidationError as exc:
            problems += [f"parameters.{name}." + _pydantic_problem(err) if err["loc"] else
                         f"parameters.{name}: " + _pydantic_problem(err) for err in exc.errors(include_url=False)]
    workflow = data.get("workflow")
    if isinstance(workflow, dict):  # checked even when other fields are bad: every problem at once
        shape = _workflow_problems(workflow)
        problems += shape
        if not shape:
            problems += _target_problems(parameters, workflow)
    if bare is not None:
        template = bare.model_copy(update={"parameters": parameters})
        subject = f"{template.name}@{template.version} ({subject})"
    if problems:
        raise TemplateError(subject, problems)
    return template


def _workflow_problems(workflow: dict[str, Any]) -> list[str]:
    if not workflow:
        return ["workflow is empty"]
    if "nodes" in workflow and "links" in workflow:
        return ["workflow is in ComfyUI's UI format (nodes and links); export it in API format (Workflow > Export (API))"]
    problems = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
            problems.append(f"workflow node {node_id}: must be an object with a class_type")
        elif not isinstance(node.get("inputs", {}), dict):
            problems.append(f"workflow node {node_id} ({node['class_type']}): inputs must be an object")
    return problems


def _target_problems(parameters: dict[str, Parameter], workflow: dict[str, Any]) -> list[str]:
    problems = []
    owner: dict[tuple[str, str], str] = {}
    for name, parameter in parameters.items():
        if not PARAMETER_NAME.match(name):
            problems.append(f"parameters.{name}: not a parameter name (letters, digits and _, not starting with a digit)")
        for target in parameter.sets:
            where = f"parameters.{name}.sets {target}"
            node = workflow.get(target.node)
            if not isinstance(node, dict):
                problems.append(f"{where}: the workflow has no node {target.node!r}")
                continue
            inputs = node.get("inputs") or {}
            if target.field not in inputs:
                known = ", ".join(sorted(inputs)) or "none"
                problems.append(f"{where}: node {target.node} ({node.get('class_type')}) has no input {target.field!r} "
                                f"in the workflow (its inputs: {known})")
                continue
            if _is_link(inputs[target.field]):
                problems.append(f"{where}: that input is a link to node {inputs[target.field][0]}; a parameter cannot replace a link")
            key = (target.node, target.field)
            if key in owner and owner[key] != name:
                problems.append(f"{where}: also set by parameter {owner[key]}")
            owner[key] = name
    return problems


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _pydantic_problem(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "missing":
        message = "required"
    return f"{loc}: {message}" if loc else message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
