"""The worker accepts the dispatcher's task_id in the job input (comfy/job/input.py)."""

from __future__ import annotations

import pytest

from comfy.errors import InvalidJobInput
from comfy.job.input import parse_job_input

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def test_task_id_is_accepted_and_kept():
    job = parse_job_input({"workflow": GRAPH, "task_id": "5b1e0c2a-35a8-4d6e-9a57-2d1f6c7b8e90"})
    assert job.task_id == "5b1e0c2a-35a8-4d6e-9a57-2d1f6c7b8e90"
    assert parse_job_input({"workflow": GRAPH}).task_id is None


def test_a_task_id_that_is_not_text_is_refused_by_name():
    with pytest.raises(InvalidJobInput, match="task_id"):
        parse_job_input({"workflow": GRAPH, "task_id": {"x": 1}})
