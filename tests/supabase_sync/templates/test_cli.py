"""`python -m supabase_sync templates ...` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "templates"


@pytest.fixture()
def cli(monkeypatch, capsys):
    """The CLI's main() in this process (its output captured), with only the given environment."""
    from supabase_sync.__main__ import main

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        for name in list(os.environ):
            if name.startswith(("SUPABASE_", "WORKFLOW_TEMPLATE")):
                monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(["templates", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_python_dash_m_runs_the_templates_command():
    done = subprocess.run([sys.executable, "-m", "supabase_sync", "templates", "--dir", str(EXAMPLES), "schema", "solid_image"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"] == "solid_image@1"


def test_list_shows_every_example_and_says_the_table_was_left_out(cli):
    done = cli("list", env={"WORKFLOW_TEMPLATE_DIRS": str(EXAMPLES)})
    assert done.returncode == 0, done.stderr
    names = [line.split("\t")[0] for line in done.stdout.splitlines()[1:]]
    assert names == ["invert_image@1", "solid_image@1", "upscale_image@1", "video_poster@1"]
    assert "newest: what 'invert_image' means" in done.stdout
    assert "workflow_templates table is left out" in done.stderr


def test_list_fails_when_a_template_is_invalid(cli, tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", "version": 1, "workflow": {}}))
    done = cli("--dir", str(tmp_path), "list")
    assert done.returncode == 1 and "bad@1" in done.stdout and "INVALID: workflow is empty" in done.stdout


def test_schema_prints_a_valid_json_schema(cli):
    done = cli("--dir", str(EXAMPLES), "schema", "upscale_image")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "upscale_image@1" and schema["required"] == ["image_url"]


def test_show_prints_the_template_with_its_source(cli):
    done = cli("--dir", str(EXAMPLES), "show", "invert_image@1")
    shown = json.loads(done.stdout)
    assert shown["parameters"]["image_url"] == {"type": "media", "kind": "image", "description": "the image to invert (PNG, JPEG, WebP)",
                                                "sets": ["1.image"], "required": True}
    assert shown["source"].endswith("(invert_image@1.yaml)") and shown["workflow"]["2"]["class_type"] == "ImageInvert"


def test_render_prints_the_job_input_and_media_become_inputs(cli):
    done = cli("--dir", str(EXAMPLES), "render", "upscale_image", "--args",
               '{"image_url": "https://cdn.test/a.png", "scale": 3, "method": "area"}')
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["template"] == "upscale_image@1"
    assert out["input"]["workflow"]["2"]["inputs"] == {"image": ["1", 0], "upscale_method": "area", "scale_by": 3.0}
    assert out["input"]["inputs"] == [{"node": "1", "field": "image", "url": "https://cdn.test/a.png", "kind": "image"}]


def test_render_lists_every_bad_argument_and_exits_1(cli):
    done = cli("--dir", str(EXAMPLES), "render", "upscale_image", "--args", '{"scale": 99, "method": "x", "size": 2}')
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-4:] == [
        "  - args.size: unknown argument (this template takes: image_url, scale, method)",
        "  - args.image_url: required (image URL)",
        "  - args.scale: 99 is above the maximum 8.0",
        "  - args.method: the string 'x' is not one of 'nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos'",
    ]


def test_an_unknown_template_or_bad_json_is_named(cli):
    unknown = cli("--dir", str(EXAMPLES), "schema", "nope@2")
    assert unknown.returncode == 1 and "template 'nope@2'" in unknown.stderr and "not found" in unknown.stderr
    broken = cli("--dir", str(EXAMPLES), "render", "invert_image", "--args", "{nope")
    assert broken.returncode == 2 and "--args is not valid JSON" in broken.stderr


def test_publish_checks_files_then_puts_them_in_the_table(cli, db, tmp_path):
    env = {"SUPABASE_URL": db.url, "SUPABASE_SERVICE_ROLE_KEY": db.service_key}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "version": 1, "workflow": {"1": {"class_type": "X"}},
                                   "parameters": {"p": {"type": "int", "sets": "1.nope"}}}))
    done = cli("publish", str(EXAMPLES / "invert_image@1.yaml"), str(bad), env=env)
    assert done.returncode == 1
    assert done.stdout.strip() == "invert_image@1: published"
    assert "node 1 (X) has no input 'nope'" in done.stderr
    again = cli("publish", str(EXAMPLES / "invert_image@1.yaml"), env=env)
    assert again.returncode == 0 and again.stdout.strip() == "invert_image@1: unchanged"
    # the table is a source now: found without any folder
    listed = cli("list", env=env)
    assert listed.returncode == 0 and "invert_image@1\ttable workflow_templates" in listed.stdout
    rendered = cli("render", "invert_image", "--args", '{"image_url": "https://cdn.test/x.png"}', env=env)
    assert json.loads(rendered.stdout)["template"] == "invert_image@1"


def test_publish_without_supabase_settings_is_refused(cli):
    done = cli("publish", str(EXAMPLES / "invert_image@1.yaml"))
    assert done.returncode == 2 and "publish needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY" in done.stderr
