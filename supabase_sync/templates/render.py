"""A template and its arguments become what the worker runs: a workflow and its `inputs`.

Plain parameters are written into the workflow's node inputs. Media parameters become
entries of the worker's `inputs` (`{node, field, url, kind}`: the worker downloads the
file, gives it a unique name in ComfyUI's input folder and writes that name into the
field), so a template needs no new mechanism on the worker.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from supabase_sync.templates.args import check_args
from supabase_sync.templates.spec import Template


@dataclass(frozen=True)
class RenderedTemplate:
    """The worker's job input fields a template produced, and the arguments used."""

    template: str  # name@version
    workflow: dict[str, Any]
    inputs: list[dict[str, Any]]
    values: dict[str, Any]


def render(template: Template, args: Any) -> RenderedTemplate:
    """Check `args` (TemplateError lists every problem) and render the template with them."""
    values = check_args(template, args)
    workflow = copy.deepcopy(template.workflow)
    inputs: list[dict[str, Any]] = []
    for name, parameter in template.parameters.items():
        value = values[name]
        for target in parameter.sets:
            if parameter.type == "media":
                inputs.append({"node": target.node, "field": target.field, "url": value, "kind": parameter.kind})
            else:
                workflow[target.node]["inputs"][target.field] = value
    return RenderedTemplate(f"{template.name}@{template.version}", workflow, inputs, values)
