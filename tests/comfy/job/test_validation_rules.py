"""The graph check's rules on a small object_info (the real one is used in test_invalid_workflow)."""

from __future__ import annotations

from comfy.job.validation import find_problems

OBJECT_INFO = {
    "Source": {"input": {"required": {}}, "output": ["IMAGE", "MASK"], "output_node": False},
    "AnyIn": {"input": {"required": {"value": ["*"]}}, "output": [], "output_node": True},
    "Numbers": {
        "input": {"required": {"count": ["INT", {"min": 1, "max": 10}], "scale": ["FLOAT", {}]},
                  "optional": {"pair": ["LIST", {}]}},
        "output": [], "output_node": True,
    },
}


def test_a_literal_list_is_not_mistaken_for_a_link():
    graph = {"1": {"class_type": "Numbers", "inputs": {"count": 3, "scale": 1.5, "pair": [1, 2]}}}
    assert find_problems(graph, OBJECT_INFO) == []


def test_wildcard_inputs_accept_any_link_and_float_indexes_count_as_links():
    graph = {"1": {"class_type": "Source", "inputs": {}}, "2": {"class_type": "AnyIn", "inputs": {"value": ["1", 1.0]}}}
    assert find_problems(graph, OBJECT_INFO) == []


def test_numbers_given_as_strings_are_accepted_like_comfyui_does():
    graph = {"1": {"class_type": "Numbers", "inputs": {"count": "4", "scale": "0.5"}}}
    assert find_problems(graph, OBJECT_INFO) == []


def test_booleans_are_not_numbers_and_limits_hold():
    graph = {"1": {"class_type": "Numbers", "inputs": {"count": True, "scale": "x"}},
             "2": {"class_type": "Numbers", "inputs": {"count": 11, "scale": 1}}}
    messages = {(p.node_id, p.input_name): p.message for p in find_problems(graph, OBJECT_INFO)}
    assert messages == {
        ("1", "count"): "expected INT, got a boolean",
        ("1", "scale"): "expected FLOAT, got 'x'",
        ("2", "count"): "11 is above the maximum 10",
    }
