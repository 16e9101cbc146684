"""A task's args against a template: each kind of bad argument, all listed at once;
rendering, media parameters as the worker's `inputs`; the JSON Schema agrees with both."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from supabase_sync.templates import TemplateError, json_schema, load_template, render
from supabase_sync.templates.sources import read_template_file

ROOT = Path(__file__).resolve().parents[3]
TASK = str(uuid.uuid4())
KITCHEN_SINK = load_template({
    "name": "sink", "version": 3, "description": "every parameter type",
    "parameters": {
        "image": {"type": "media", "kind": "image", "sets": "1.image"},
        "mask": {"type": "media", "default": "https://cdn.test/mask.png", "sets": "4.image"},
        "seed": {"type": "int", "default": 0, "minimum": 0, "maximum": 2**64 - 1, "sets": "5.seed"},
        "scale": {"type": "float", "default": 1.5, "minimum": 0.5, "maximum": 4, "sets": ["2.scale_by", "6.scale_by"]},
        "method": {"type": "enum", "values": ["lanczos", "area", 3], "default": "lanczos", "sets": "2.upscale_method"},
        "prefix": {"type": "string", "default": "out", "min_length": 1, "max_length": 10, "pattern": "^[a-z]+$",
                   "sets": "3.filename_prefix"},
        "flip": {"type": "bool", "default": False, "sets": "5.flip"},
    },
    "workflow": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "mask.png"}},
        "5": {"class_type": "Custom", "inputs": {"seed": 1, "flip": True}},
        "6": {"class_type": "ImageScaleBy", "inputs": {"image": ["4", 0], "upscale_method": "area", "scale_by": 1.0}},
    },
}, "test")


def problems(args) -> list[str]:
    with pytest.raises(TemplateError) as info:
        render(KITCHEN_SINK, args)
    return info.value.problems


def test_defaults_fill_in_and_every_target_is_set():
    before = copy.deepcopy(KITCHEN_SINK.workflow)
    rendered = render(KITCHEN_SINK, {"image": "https://cdn.test/cat.png", "scale": 2, "seed": 2**64 - 1})
    assert rendered.template == "sink@3"
    assert rendered.workflow["2"]["inputs"] == {"image": ["1", 0], "upscale_method": "lanczos", "scale_by": 2.0}
    assert rendered.workflow["6"]["inputs"]["scale_by"] == 2.0 and isinstance(rendered.workflow["6"]["inputs"]["scale_by"], float)
    assert rendered.workflow["5"]["inputs"] == {"seed": 2**64 - 1, "flip": False}
    assert rendered.workflow["3"]["inputs"]["filename_prefix"] == "out"
    # media parameters become the worker's `inputs`; the workflow keeps its placeholders
    assert rendered.inputs == [{"node": "1", "field": "image", "url": "https://cdn.test/cat.png", "kind": "image"},
                               {"node": "4", "field": "image", "url": "https://cdn.test/mask.png", "kind": "file"}]
    assert rendered.workflow["1"]["inputs"]["image"] == "placeholder.png"
    assert KITCHEN_SINK.workflow == before  # the template itself is never changed


def test_an_integer_may_be_written_as_a_whole_float_and_enums_match_numbers_by_value():
    rendered = render(KITCHEN_SINK, {"image": "https://x.test/a.png", "seed": 7.0, "method": 3.0})
    assert rendered.workflow["5"]["inputs"]["seed"] == 7 and isinstance(rendered.workflow["5"]["inputs"]["seed"], int)
    assert rendered.workflow["2"]["inputs"]["upscale_method"] == 3


def test_a_media_argument_may_be_the_output_of_another_task():
    ref = {"from_task": TASK, "output": "9"}
    rendered = render(KITCHEN_SINK, {"image": ref})
    assert rendered.inputs[0]["url"] == ref  # resolved to a URL by the dispatcher at submission


def test_every_kind_of_bad_argument_is_listed_at_once():
    found = problems({
        "seed": "7", "scale": 9, "method": "nearest", "prefix": "UPPER", "flip": 1, "mask": "file:///etc/passwd",
        "colour": "red",
    })
    assert found == [
        "args.colour: unknown argument (this template takes: image, mask, seed, scale, method, prefix, flip)",
        "args.image: required (image URL)",
        "args.mask: the string 'file:///etc/passwd' is not an http or https URL",
        "args.seed: must be an integer, not the string '7'",
        "args.scale: 9 is above the maximum 4",
        "args.method: the string 'nearest' is not one of 'lanczos', 'area', 3",
        "args.prefix: the string 'UPPER' does not match the pattern '^[a-z]+$'",
        "args.flip: must be true or false, not the number 1",
    ]


@pytest.mark.parametrize("args,expected", [
    ({"seed": True}, "args.seed: must be an integer, not a boolean"),
    ({"seed": 1.5}, "args.seed: must be an integer, not the number 1.5"),
    ({"seed": -1}, "args.seed: -1 is below the minimum 0"),
    ({"scale": "2"}, "args.scale: must be a number, not the string '2'"),
    ({"scale": 0.1}, "args.scale: 0.1 is below the minimum 0.5"),
    ({"prefix": ""}, "args.prefix: is 0 characters long; at least 1"),
    ({"prefix": "abcdefghijk"}, "args.prefix: is 11 characters long; at most 10"),
    ({"method": True}, "args.method: a boolean is not one of"),
    ({"image": ["https://x.test/a.png"]}, "args.image: must be an http(s) URL or"),
    ({"image": {"from_task": "nope"}}, "args.image: from_task must be a task id (a UUID), not 'nope'"),
    ({"image": {"from_task": TASK, "output": -1}}, "args.image: output must be an index (0, 1, ...) or a node id"),
    ({"image": {"from_task": TASK, "index": 0}}, "args.image: an output reference takes only from_task and output, not index"),
    ({"image": "https://x.test/" + "a" * 9000}, "args.image: the URL is 9015 characters long; at most 8192"),
])
def test_each_bad_argument_is_named(args, expected):
    found = problems({"image": "https://x.test/a.png", **args})
    assert len(found) == 1 and found[0].startswith(expected), found


def test_args_must_be_an_object():
    assert problems(["https://x.test/a.png"]) == ["args must be an object of arguments, not a list"]


GOOD = [{"image": "https://x.test/a.png"}, {"image": "HTTP://X.TEST/a", "seed": 5.0, "method": 3, "flip": True},
        {"image": {"from_task": TASK}}, {"image": {"from_task": TASK, "output": 2}, "scale": 4, "prefix": "abc"}]
BAD = [{}, {"image": "https://x.test/a.png", "extra": 1}, {"image": 5}, {"image": "ftp://x"},
       {"image": "https://x.test/a", "seed": True}, {"image": "https://x.test/a", "seed": 1.5},
       {"image": "https://x.test/a", "scale": "1"}, {"image": "https://x.test/a", "method": "nope"},
       {"image": "https://x.test/a", "method": True}, {"image": "https://x.test/a", "prefix": "A"},
       {"image": "https://x.test/a", "prefix": ""}, {"image": "https://x.test/a", "flip": 0},
       {"image": {"from_task": TASK, "output": -1}}, {"image": {"from_task": TASK, "x": 1}},
       {"image": {"from_task": "x"}}, {"image": "https://x.test/a", "seed": -1}, {"image": "https://x.test/a", "scale": 4.01}]


@pytest.mark.parametrize("args", GOOD + BAD, ids=[json.dumps(a)[:60] for a in GOOD + BAD])
def test_the_json_schema_accepts_exactly_what_the_dispatcher_accepts(args):
    schema = json_schema(KITCHEN_SINK)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    try:
        render(KITCHEN_SINK, args)
        ours = True
    except TemplateError:
        ours = False
    assert validator.is_valid(args) == ours == (args in GOOD)


def test_the_schema_describes_types_defaults_and_what_is_required():
    schema = json_schema(KITCHEN_SINK)
    assert schema["title"] == "sink@3" and schema["required"] == ["image"] and schema["additionalProperties"] is False
    assert schema["properties"]["seed"] == {"type": "integer", "minimum": 0, "maximum": 2**64 - 1, "default": 0}
    assert schema["properties"]["method"]["enum"] == ["lanczos", "area", 3]
    assert schema["properties"]["image"]["x-media-kind"] == "image"


@pytest.mark.parametrize("name", ["invert_image@1", "upscale_image@1", "solid_image@1", "video_poster@1"])
def test_the_example_templates_render_with_only_their_required_args(name):
    shipped = read_template_file(ROOT / "templates" / f"{name}.yaml")
    args = {n: "https://cdn.test/in" for n, p in shipped.parameters.items() if p.required}
    rendered = render(shipped, args)
    assert all(i["url"] == "https://cdn.test/in" for i in rendered.inputs)
    jsonschema.Draft202012Validator(json_schema(shipped)).validate(args)


def test_a_costly_pattern_meeting_a_hostile_value_is_cut_short_not_left_to_stall_the_dispatcher():
    import time

    costly = load_template({"name": "c", "version": 1, "workflow": KITCHEN_SINK.workflow, "parameters": {
        "prefix": {"type": "string", "pattern": "^(a|aa)+$", "sets": "3.filename_prefix"}}}, "test")
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        render(costly, {"prefix": "a" * 60 + "b"})
    assert time.monotonic() - started < 10  # unbounded with the standard `re` (2^60 steps)
    assert "took longer than 0.1 s" in info.value.problems[0]
