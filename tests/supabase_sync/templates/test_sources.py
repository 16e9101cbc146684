"""Where templates come from: folders and the workflow_templates table (real PostgreSQL
behind the PostgREST double), version resolution and their precedence."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import psycopg
import pytest
import yaml

from supabase_sync.store import TaskStore
from supabase_sync.templates import TableSource, TemplateCatalog, TemplateError

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


def spec(name: str, version: int, color: int = 0, description: str = "") -> dict:
    workflow = json.loads(json.dumps(WORKFLOW))
    workflow["1"]["inputs"]["color"] = color
    return {"name": name, "version": version, "description": description or f"{name} v{version}",
            "parameters": {"width": {"type": "int", "default": 8, "minimum": 1, "sets": "1.width"}}, "workflow": workflow}


def write(folder: Path, data: dict, filename: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (filename or f"{data['name']}@{data['version']}.yaml")
    path.write_text(yaml.safe_dump(data) if path.suffix != ".json" else json.dumps(data))
    return path


def publish(db, data: dict) -> str:
    return db.sql("select publish_workflow_template(%s, %s, %s, %s, %s) o",
                  (data["name"], data["version"], json.dumps(data["workflow"]), json.dumps(data["parameters"]),
                   data["description"]))[0]["o"]


def resolve(catalog: TemplateCatalog, *refs: str) -> dict:
    return asyncio.run(catalog.resolve(refs))


async def with_table(db, folders, work):
    store = await TaskStore.connect(db.url, db.service_key)
    try:
        return await work(TemplateCatalog(folders, TableSource(store)))
    finally:
        await store.aclose()


def test_a_name_alone_means_the_newest_version_and_name_at_version_that_one(tmp_path):
    for version in (1, 2, 10):
        write(tmp_path, spec("gen", version))
    write(tmp_path / "nested", spec("other", 1), "other.json")
    catalog = TemplateCatalog([tmp_path], None)
    found = resolve(catalog, "gen", "gen@2", "other", "gen@3", "nope", "bad@x")
    assert (found["gen"].version, found["gen@2"].version, found["other"].version) == (10, 2, 1)
    assert found["gen@3"].problems == ["no such version (versions found: 1, 2, 10)"]
    assert "not found (looked in: " in found["nope"].problems[0]
    assert isinstance(found["bad@x"], TemplateError)


def test_the_first_folder_wins_for_the_same_version(tmp_path):
    write(tmp_path / "volume", spec("gen", 1, color=111))
    write(tmp_path / "image", spec("gen", 1, color=222))
    write(tmp_path / "image", spec("gen", 2, color=333))
    catalog = TemplateCatalog([tmp_path / "volume", tmp_path / "image"], None)
    found = resolve(catalog, "gen@1", "gen")
    assert found["gen@1"].template.workflow["1"]["inputs"]["color"] == 111 and "volume" in found["gen@1"].source
    assert found["gen"].version == 2


def test_an_invalid_newest_version_is_an_error_not_a_silent_fallback(tmp_path):
    write(tmp_path, spec("gen", 1))
    broken = spec("gen", 2)
    broken["parameters"]["width"]["sets"] = "7.width"
    write(tmp_path, broken)
    found = resolve(TemplateCatalog([tmp_path], None), "gen")["gen"]
    with pytest.raises(TemplateError, match="the workflow has no node '7'"):
        found.usable()


def test_a_version_defined_twice_in_a_folder_is_unusable_and_unreadable_files_are_named(tmp_path):
    write(tmp_path, spec("gen", 1), "a.yaml")
    write(tmp_path, spec("gen", 1, color=5), "b.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    (tmp_path / "notes.yaml").write_text("just: some yaml\n")
    (tmp_path / ".hidden.yaml").write_text("name: [unclosed")
    catalog = TemplateCatalog([tmp_path, tmp_path / "missing"], None)
    with pytest.raises(TemplateError, match="gen@1 is defined twice, in .*a.yaml.* and .*b.yaml"):
        resolve(catalog, "gen")["gen"].usable()
    listed, unreadable = asyncio.run(catalog.everything())
    text = "\n".join(unreadable)
    assert "broken.yaml: not valid YAML" in text and "notes.yaml: not a template" in text
    assert "missing: not a folder" in text and ".hidden" not in text


def test_changed_files_are_read_again_and_a_changed_version_is_logged(tmp_path, caplog):
    path = write(tmp_path, spec("gen", 1))
    catalog = TemplateCatalog([tmp_path], None)
    assert resolve(catalog, "gen")["gen"].version == 1
    write(tmp_path, spec("gen", 2))
    assert resolve(catalog, "gen")["gen"].version == 2  # a new file: no restart needed
    with caplog.at_level(logging.WARNING, logger="supabase_sync.templates"):
        path.write_text(yaml.safe_dump(spec("gen", 1, color=9)))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        assert resolve(catalog, "gen@1")["gen@1"].template.workflow["1"]["inputs"]["color"] == 9
    assert "template gen@1 changed in" in caplog.text and "publish version 2 instead" in caplog.text


def test_the_table_answers_what_the_folders_do_not_and_folders_win_ties(db, tmp_path):
    write(tmp_path, spec("gen", 2, color=1, description="from the folder"))
    assert publish(db, spec("gen", 2, color=2, description="from the table")) == "published"
    publish(db, spec("gen", 3, color=3))
    publish(db, spec("table_only", 1))

    async def work(catalog):
        first = await catalog.resolve(["gen", "gen@2", "table_only", "table_only@1", "gen@9"])
        calls = db.postgrest.calls
        again = await catalog.resolve(["table_only@1", "gen@2"])  # pinned versions: memory and the folder
        calls = db.postgrest.calls - calls
        listed, _ = await catalog.everything()
        return first, calls, again, listed

    first, calls, again, listed = asyncio.run(with_table(db, [tmp_path], work))
    assert first["gen"].version == 3 and first["gen"].source == "table workflow_templates"
    assert first["gen@2"].description == "from the folder"
    assert first["table_only"].version == 1 and first["table_only@1"].template is not None
    assert first["gen@9"].problems == ["no such version (versions found: 2, 3)"]
    assert calls == 0 and again["table_only@1"].source == "table workflow_templates"
    shadowed = [(f"{f.name}@{f.version}", f.source, by) for f, by in listed if by]
    assert shadowed == [("gen@2", "table workflow_templates", f"folder {tmp_path} (gen@2.yaml)")]


def test_table_versions_never_change_and_publishing_is_repeatable(db):
    data = spec("gen", 1)
    assert publish(db, data) == "published"
    assert publish(db, data) == "unchanged"
    assert publish(db, {**data, "description": "better words"}) == "unchanged"
    assert db.sql("select description from workflow_templates")[0]["description"] == "better words"
    with pytest.raises(psycopg.errors.UniqueViolation, match="already exists with a different workflow.*publish gen@2"):
        publish(db, spec("gen", 1, color=7))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="cannot change .*publish version 2"):
        db.sql("update workflow_templates set workflow = '{}' where name = 'gen'")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.sql("insert into workflow_templates (name, version, workflow) values ('a@b', 1, '{}')")


def test_an_invalid_table_row_is_reported_with_its_problems(db):
    db.sql("insert into workflow_templates (name, version, workflow, parameters) values "
           "('raw', 1, '{\"1\": {\"class_type\": \"X\", \"inputs\": {}}}', '{\"p\": {\"type\": \"int\", \"sets\": \"1.nope\"}}')")

    async def work(catalog):
        return (await catalog.resolve(["raw"]))["raw"]

    found = asyncio.run(with_table(db, [], work))
    with pytest.raises(TemplateError, match=r"raw@1 \(table workflow_templates\) is invalid.*no input 'nope'"):
        found.usable()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_read_the_templates_table_or_its_functions(db, role):
    publish(db, spec("gen", 1))
    for query in ("select * from workflow_templates", "select * from get_workflow_templates(array['gen'])",
                  "select * from list_workflow_templates()"):
        with psycopg.connect(db.dsn) as conn:
            conn.execute(f"set role {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(query)


def test_yaml_aliases_are_refused_in_template_files(tmp_path):
    (tmp_path / "bomb.yaml").write_text("name: bomb\nversion: 1\na: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nworkflow: {x: *b}\n")
    listed, unreadable = asyncio.run(TemplateCatalog([tmp_path], None).everything())
    assert listed == [] and "aliases (*name) are not allowed in template files" in unreadable[0]
