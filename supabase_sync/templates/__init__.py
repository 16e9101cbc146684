"""Workflow templates: a task names a template and its arguments instead of carrying a workflow.

    spec.py     what a template is (Template, Parameter, TemplateRef), every problem found at once
    args.py     a task's args checked against the parameters
    render.py   template + args -> the worker's workflow and `inputs`
    schema.py   the args as JSON Schema
    sources.py  template folders and the workflow_templates table, and their precedence
    cli.py      python -m supabase_sync templates list | show | schema | render | publish

The dispatcher renders (docs/dispatcher.md, "Templates"); the worker receives a plain workflow.
"""

from supabase_sync.templates.render import RenderedTemplate, render
from supabase_sync.templates.schema import json_schema
from supabase_sync.templates.sources import Found, TableSource, TemplateCatalog
from supabase_sync.templates.spec import Template, TemplateError, TemplateRef, load_template

__all__ = ["Found", "RenderedTemplate", "TableSource", "Template", "TemplateCatalog", "TemplateError", "TemplateRef",
           "json_schema", "load_template", "render"]
