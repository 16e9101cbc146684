"""What a template is: loading, every problem of a bad one listed at once, references."""

from __future__ import annotations

from pathlib import Path

import pytest

from supabase_sync.templates import TemplateError, TemplateRef, load_template
from supabase_sync.templates.sources import read_template_file

ROOT = Path(__file__).resolve().parents[3]
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "lanczos", "scale_by": 2.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def template(**parameters):
    return {"name": "t", "version": 1, "parameters": parameters, "workflow": WORKFLOW}


def problems_of(data) -> list[str]:
    with pytest.raises(TemplateError) as info:
        load_template(data, "test")
    return info.value.problems


@pytest.mark.parametrize("path", sorted((ROOT / "templates").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_example_templates_load(path):
    loaded = read_template_file(path)
    assert path.name == f"{loaded.name}@{loaded.version}.yaml" and loaded.description


def test_sets_takes_node_dot_input_a_list_or_objects():
    loaded = load_template(template(
        a={"type": "float", "default": 1.0, "sets": "2.scale_by"},
        b={"type": "string", "default": "x", "sets": [{"node": 3, "field": "filename_prefix"}]},
    ), "test")
    assert [str(t) for t in loaded.parameters["a"].sets] == ["2.scale_by"]
    assert [str(t) for t in loaded.parameters["b"].sets] == ["3.filename_prefix"]
    assert loaded.parameters["a"].required is False


def test_every_problem_of_a_template_is_listed_at_once():
    problems = problems_of({
        "name": "bad@name", "version": 0, "surprise": 1, "workflow": WORKFLOW,
        "parameters": {
            "scale": {"type": "float", "default": 10, "maximum": 8, "sets": "2.scale_by"},   # default out of range
            "missing_node": {"type": "int", "default": 1, "sets": "9.width"},
            "typo": {"type": "string", "default": "x", "sets": "3.filename_prefx"},
            "link": {"type": "int", "default": 1, "sets": "2.image"},
            "again": {"type": "string", "default": "y", "sets": "3.filename_prefix"},
            "again2": {"type": "string", "default": "z", "sets": "3.filename_prefix"},
            "wrong_constraint": {"type": "int", "pattern": "x", "sets": "2.scale_by"},
            "enum_without_values": {"type": "enum", "sets": "2.upscale_method"},
            "unknown_type": {"type": "tensor", "sets": "2.scale_by"},
            "no_sets": {"type": "int"},
            "9lives": {"type": "int", "default": 9, "sets": "1.image"},
        },
    })
    text = "\n".join(problems)
    for expected in [
        "name: Value error, 'bad@name' is not a template name", "version: Input should be greater than or equal to 1",
        "surprise: unknown field",
        "parameters.scale: default 10: 10 is above the maximum 8",
        "parameters.missing_node.sets 9.width: the workflow has no node '9'",
        "parameters.typo.sets 3.filename_prefx: node 3 (SaveImage) has no input 'filename_prefx' in the workflow "
        "(its inputs: filename_prefix, images)",
        "parameters.link.sets 2.image: that input is a link to node 1",
        "parameters.again2.sets 3.filename_prefix: also set by parameter again",
        "parameters.wrong_constraint: pattern does not apply to type int",
        "parameters.enum_without_values: type enum needs `values`",
        "parameters.unknown_type.type: Input should be 'int', 'float', 'string', 'bool', 'enum' or 'media'",
        "parameters.no_sets.sets: required",
        "parameters.9lives: not a parameter name",
    ]:
        assert expected.replace("Value error, ", "") in text, f"{expected!r} not in:\n{text}"


def test_a_ui_format_export_is_refused_with_advice():
    [problem] = problems_of({"name": "t", "version": 1, "workflow": {"nodes": [], "links": []}})
    assert "UI format" in problem and "Export (API)" in problem


@pytest.mark.parametrize("data,expected", [
    ({"type": "enum", "values": ["a", "a"], "sets": "2.upscale_method"}, "enum values must be unique"),
    ({"type": "enum", "values": [True], "sets": "2.upscale_method"}, "Input should be a valid"),
    ({"type": "enum", "values": ["a"], "default": "b", "sets": "2.upscale_method"}, "default 'b': the string 'b' is not one of 'a'"),
    ({"type": "int", "minimum": 5, "maximum": 1, "sets": "2.scale_by"}, "minimum 5 is above maximum 1"),
    ({"type": "string", "pattern": "(", "sets": "3.filename_prefix"}, "pattern is not a valid regular expression"),
    ({"type": "media", "kind": "image", "default": "ftp://x", "sets": "1.image"}, "is not an http or https URL"),
    ({"type": "bool", "default": None, "sets": "3.filename_prefix"}, "default None: must be true or false, not null"),
    ({"type": "float", "minimum": float("inf"), "sets": "2.scale_by"}, "must be a finite number"),
])
def test_bad_parameter_specs_are_named(data, expected):
    assert any(expected in p for p in problems_of(template(p=data))), problems_of(template(p=data))


@pytest.mark.parametrize("text,expected", [("upscale", ("upscale", None)), ("upscale@12", ("upscale", 12)),
                                           ("a.b-c_d@1", ("a.b-c_d", 1))])
def test_references_name_a_version_or_the_newest(text, expected):
    assert tuple(TemplateRef.parse(text)) == expected and str(TemplateRef.parse(text)) == text


@pytest.mark.parametrize("text", ["", "up@", "up@0", "up@v2", "up@1.5", "@1", "a b", "up@1@2", "x" * 101])
def test_bad_references_are_refused(text):
    with pytest.raises(TemplateError):
        TemplateRef.parse(text)
