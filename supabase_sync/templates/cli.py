"""python -m supabase_sync templates list | show NAME | schema NAME | render NAME --args '{...}' | publish FILE...

    list              every template version of every source: the one `name` means, invalid
                      ones with their problems, table rows a folder shadows (exit 1 if any is invalid)
    show NAME         the template (name or name@version) as JSON: parameters, workflow, source
    schema NAME       its arguments as JSON Schema (draft 2020-12), for client code generation
    render NAME       the job input the dispatcher would send: --args '{"image_url": "https://..."}'
                      (from_task references stay as they are: they are resolved at submission)
    publish FILE...   check template files and insert them into the workflow_templates table

Sources: the folders of WORKFLOW_TEMPLATE_DIRS (or --dir, repeatable), then the
workflow_templates table when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set (--no-table:
folders only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supabase_sync.config import template_dirs
from supabase_sync.templates.render import render
from supabase_sync.templates.schema import json_schema
from supabase_sync.templates.sources import TableSource, TemplateCatalog, read_template_file
from supabase_sync.templates.spec import Template, TemplateError

if TYPE_CHECKING:
    from supabase_sync.store import TaskStore


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m supabase_sync templates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", action="append", type=Path, default=None,
                        help="a template folder (repeatable; default: WORKFLOW_TEMPLATE_DIRS)")
    parser.add_argument("--no-table", action="store_true", help="leave out the workflow_templates table")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    for name in ("show", "schema"):
        sub.add_parser(name).add_argument("template", help="name or name@version")
    rendering = sub.add_parser("render")
    rendering.add_argument("template", help="name or name@version")
    rendering.add_argument("--args", default="{}", help="the arguments as a JSON object")
    publishing = sub.add_parser("publish")
    publishing.add_argument("files", nargs="+", type=Path)
    options = parser.parse_args(argv)
    try:
        return asyncio.run(_run(options))
    except TemplateError as exc:
        print(_explain(exc), file=sys.stderr)
        return 1


async def _run(options: argparse.Namespace) -> int:
    folders = options.dir if options.dir is not None else template_dirs(os.environ.get("WORKFLOW_TEMPLATE_DIRS", ""))
    store = None
    url, key = os.environ.get("SUPABASE_URL"), os.environ.get("SUPABASE_SERVICE_ROLE_KEY")
    if not options.no_table:
        if url and key:
            from supabase_sync.store import TaskStore  # the supabase client: only when the table is used

            store = await TaskStore.connect(url, key, max_connections=2)
        elif options.command == "publish":
            print("publish needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY", file=sys.stderr)
            return 2
        else:
            print("(the workflow_templates table is left out: SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY are not set)",
                  file=sys.stderr)
    catalog = TemplateCatalog(folders, TableSource(store) if store else None)
    try:
        if options.command == "list":
            return await _list(catalog)
        if options.command == "publish":
            return await _publish(store, options.files)
        template = await catalog.get(options.template)
        if options.command == "show":
            _print(template_document(template, await _source_of(catalog, options.template)))
        elif options.command == "schema":
            _print(json_schema(template))
        else:
            try:
                args = json.loads(options.args)
            except json.JSONDecodeError as exc:
                print(f"--args is not valid JSON ({exc})", file=sys.stderr)
                return 2
            rendered = render(template, args)
            job: dict[str, Any] = {"workflow": rendered.workflow}
            if rendered.inputs:
                job["inputs"] = rendered.inputs
            _print({"template": rendered.template, "input": job})
        return 0
    finally:
        if store is not None:
            await store.aclose()


async def _list(catalog: TemplateCatalog) -> int:
    listed, unreadable = await catalog.everything()
    newest: dict[str, int] = {}
    for found, shadowed_by in listed:
        if shadowed_by is None:
            newest[found.name] = max(newest.get(found.name, 0), found.version)
    bad = bool(unreadable)
    print(f"sources: {catalog.describe()}")
    for found, shadowed_by in listed:
        notes = []
        if shadowed_by:
            notes.append(f"shadowed by {shadowed_by}")
        elif newest.get(found.name) == found.version:
            notes.append(f"newest: what '{found.name}' means")
        if found.template is None:
            bad = True
            notes.append("INVALID: " + "; ".join(found.problems))
        line = f"{found.name}@{found.version}\t{found.source}\t{found.description}"
        print(line + (f"\t[{'; '.join(notes)}]" if notes else ""))
    for problem in unreadable:
        print(f"not a template: {problem}")
    if not listed and not unreadable:
        print("no templates")
    return 1 if bad else 0


async def _publish(store: TaskStore | None, files: list[Path]) -> int:
    assert store is not None
    failed = 0
    for path in files:
        try:
            template = read_template_file(path)
        except TemplateError as exc:
            print(_explain(exc), file=sys.stderr)
            failed += 1
            continue
        try:
            outcome = await store.publish_workflow_template(
                template.name, template.version, template.workflow,
                template.model_dump(mode="json", exclude_unset=True)["parameters"], template.description)
        except Exception as exc:  # the database's refusal (an existing, different version) says why
            print(f"{path}: {template.name}@{template.version} not published: {getattr(exc, 'message', exc)}", file=sys.stderr)
            failed += 1
            continue
        print(f"{template.name}@{template.version}: {outcome}")
    return 1 if failed else 0


async def _source_of(catalog: TemplateCatalog, text: str) -> str | None:
    found = (await catalog.resolve([text]))[text]
    return None if isinstance(found, TemplateError) else found.source


def template_document(template: Template, source: str | None = None) -> dict[str, Any]:
    """A template as `show` prints it: what was written (sets as 'node.input'), whether each argument is required, the source."""
    document = template.model_dump(mode="json", exclude_unset=True)
    for name, parameter in template.parameters.items():
        document["parameters"][name]["sets"] = [str(target) for target in parameter.sets]
        document["parameters"][name]["required"] = parameter.required
    if source:
        document["source"] = source
    return document


def _explain(exc: TemplateError) -> str:
    return f"{exc.subject}:\n" + "\n".join(f"  - {problem}" for problem in exc.problems)


def _print(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
