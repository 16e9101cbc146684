"""Settings, routes, job input and job outcomes: the dispatcher's pure parts."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from supabase_sync.__main__ import main
from supabase_sync.config import ConfigError, OutputDelivery, Route, Settings
from supabase_sync.jobs import InvalidTaskParams, build_job_input, interpret_status, primary_output_url
from supabase_sync.runpod_api import JobStatus, RetryPolicy, RunPodClient, RunPodRejected, RunPodUnavailable

BASE_ENV = {"SUPABASE_URL": "http://127.0.0.1:1", "SUPABASE_SERVICE_ROLE_KEY": "k", "RUNPOD_API_KEY": "r",
            "DISPATCHER_ROUTES": "comfy=ep1;vace,flux,t2v,i2v=ep2"}
TASK = uuid.UUID("5b1e0c2a-35a8-4d6e-9a57-2d1f6c7b8e90")


def test_compact_routes_and_defaults():
    settings = Settings.from_env(BASE_ENV)
    comfy, wan = settings.routing.routes
    assert (comfy.endpoint_id, comfy.kind, wan.kind) == ("ep1", "comfy", "passthrough")
    assert settings.routing.route_for("flux") is wan and settings.routing.route_for("x") is None
    assert settings.poll_interval_s == 5.0 and settings.public_url is None


def test_missing_variables_are_all_named():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SUPABASE_URL": "x"})
    for name in ("SUPABASE_SERVICE_ROLE_KEY", "RUNPOD_API_KEY", "DISPATCHER_ROUTES or DISPATCHER_ROUTES_FILE"):
        assert name in str(info.value)


def test_bad_values_name_their_variable():
    with pytest.raises(ConfigError, match="POLL_INTERVAL"):
        Settings.from_env({**BASE_ENV, "POLL_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is not"):
        Settings.from_env({**BASE_ENV, "DISPATCHER_PUBLIC_URL": "https://d.example"})
    with pytest.raises(ConfigError, match="is not `type"):
        Settings.from_env({**BASE_ENV, "DISPATCHER_ROUTES": "comfy"})
    with pytest.raises(ConfigError, match="routed twice"):
        Settings.from_env({**BASE_ENV, "DISPATCHER_ROUTES": "comfy=a;comfy=b"})


def test_routes_file_with_every_option(tmp_path):
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"unknown_task_types": "fail", "routes": [
        {"endpoint_id": "ep1", "task_types": ["comfy"], "max_in_flight": 4, "execution_timeout_s": 60, "ttl_s": 3600,
         "output": {"mode": "supabase", "bucket": "outputs", "prefix": "comfy"}}]}))
    settings = Settings.from_env({**BASE_ENV, "DISPATCHER_ROUTES": "", "DISPATCHER_ROUTES_FILE": str(path)})
    [route] = settings.routing.routes
    assert route.policy() == {"executionTimeout": 60000, "ttl": 3600000}
    assert settings.routing.unknown_task_types == "fail"
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Settings.from_env({**BASE_ENV, "DISPATCHER_ROUTES_FILE": str(path)})
    path.write_text(json.dumps({"routes": [{"endpoint_id": "e", "task_types": ["comfy"], "max_inflight": 3}]}))
    with pytest.raises(ConfigError, match="max_inflight"):
        Settings.from_env({**BASE_ENV, "DISPATCHER_ROUTES_FILE": str(path)})


def test_check_config_command_reports_routes_and_errors(capsys, monkeypatch):
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["check-config"]) == 0
    assert "vace, flux, t2v, i2v -> endpoint ep2 (passthrough" in capsys.readouterr().out
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert main(["check-config"]) == 2
    assert "missing environment variables: RUNPOD_API_KEY" in capsys.readouterr().err
    assert main(["sql"]) == 0
    assert "create or replace function public.claim_tasks" in capsys.readouterr().out


def test_comfy_job_input_from_the_seeds_params_with_output_delivery():
    route = Route(endpoint_id="e", task_types=["comfy"], output=OutputDelivery(bucket="outputs", prefix="comfy/"))
    params = {"workflow": json.dumps({"1": {"class_type": "X", "inputs": {}}}), "video_url": "https://x.test/v.mp4",
              "video_node_id": "1", "video_input_field": "video"}
    job = build_job_input(TASK, "comfy", params, route)
    assert job["workflow"] == {"1": {"class_type": "X", "inputs": {}}}  # JSON text parsed
    assert job["output"] == {"mode": "supabase", "bucket": "outputs", "prefix": f"comfy/{TASK}"}
    assert job["task_id"] == str(TASK) and job["video_node_id"] == "1"
    own = build_job_input(TASK, "comfy", {**params, "output": {"mode": "inline"}}, route)
    assert own["output"]["mode"] == "inline"  # the task's own choice wins
    assert build_job_input(TASK, "comfy", json.dumps(params), route)["video_url"] == "https://x.test/v.mp4"


@pytest.mark.parametrize("params, message", [
    ({}, "params has no 'workflow'"),
    ({"workflow": {}}, "non-empty JSON object"),
    ({"workflow": "[1, 2"}, "not valid JSON"),
    ({"workflow": [1]}, "non-empty JSON object"),
    ("{broken", "params is a string that is not valid JSON"),
    (42, "params must be a JSON object, not int"),
    ({"workflow": {"1": {"class_type": "X"}}, "images": [{"name": "a.png", "image": "A" * (11 * 1024 * 1024)}]},
     "over RunPod's 10 MB /run limit"),
])
def test_params_that_cannot_become_a_job_say_why(params, message):
    with pytest.raises(InvalidTaskParams, match=message):
        build_job_input(TASK, "comfy", params, Route(endpoint_id="e", task_types=["comfy"]))


def test_outcomes_from_runpod_statuses():
    done = interpret_status(JobStatus(id="j", status="COMPLETED", output={
        "outputs": [{"node_id": "9", "kind": "text", "text": "hi"}, {"node_id": "3", "url": "https://cdn/a.png"},
                    {"node_id": "4", "url": "https://cdn/b.png"}],
        "images": [{"filename": "a.png", "type": "base64", "data": "x" * 100_000}]}))
    assert done.kind == "complete" and done.output_url == "https://cdn/a.png"
    assert done.result["output"]["images"][0] == {"filename": "a.png", "type": "base64", "data_omitted_bytes": 100_000}
    assert primary_output_url({"images": [{"type": "s3_url", "data": "https://s3/x.png"}]}) == "https://s3/x.png"
    bad = interpret_status(JobStatus(id="j", status="FAILED", error="graph is wrong",
                                     output={"error_type": "invalid_workflow", "details": [{"node": "1"}]}))
    assert (bad.kind, bad.retryable) == ("fail", False) and bad.error.startswith("invalid_workflow: graph is wrong | details")
    crash = interpret_status(JobStatus(id="j", status="FAILED", error=json.dumps(
        {"error_type": "<class 'RuntimeError'>", "error_message": "CUDA out of memory"})))
    assert crash.retryable and crash.error == "<class 'RuntimeError'>: CUDA out of memory"
    assert interpret_status(JobStatus(id="j", status="TIMED_OUT")).retryable
    running = interpret_status(JobStatus(id="j", status="IN_PROGRESS", output={"percent": 40}))
    assert running.kind == "running" and running.progress == {"percent": 40}


def _client(handler, attempts=3):
    return RunPodClient("key", "https://api.test/v2", retry=RetryPolicy(attempts=attempts, base_delay_s=0.001),
                        transport=httpx.MockTransport(handler))


def test_runpod_client_retries_429_then_succeeds_and_sends_webhook_and_policy():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(429, json={"error": "slow down"})
        return httpx.Response(200, json={"id": "job-1", "status": "IN_QUEUE"})

    async def go():
        client = _client(handler)
        try:
            return await client.run("ep", {"a": 1}, webhook="https://hook", policy={"ttl": 5})
        finally:
            await client.aclose()

    assert asyncio.run(go()) == "job-1"
    assert len(seen) == 3 and seen[0].url.path == "/v2/ep/run"
    assert seen[0].headers["authorization"] == "Bearer key"
    assert json.loads(seen[-1].content) == {"input": {"a": 1}, "webhook": "https://hook", "policy": {"ttl": 5}}


def test_runpod_client_does_not_resubmit_a_run_after_a_5xx_but_retries_status():
    calls = {"run": 0, "status": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        kind = "run" if request.url.path.endswith("/run") else "status"
        calls[kind] += 1
        if kind == "status" and calls[kind] == 3:
            return httpx.Response(404, json={"error": "request does not exist"})
        return httpx.Response(502, text="bad gateway")

    async def go():
        client = _client(handler)
        try:
            with pytest.raises(RunPodUnavailable, match="HTTP 502"):
                await client.run("ep", {})
            assert await client.status("ep", "job-1") is None  # two 502s, then 404: RunPod forgot it
        finally:
            await client.aclose()

    asyncio.run(go())
    assert calls == {"run": 1, "status": 3}


def test_runpod_client_4xx_is_rejected_without_retry():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(401, json={"error": "Unauthorized"})

    async def go():
        client = _client(handler)
        try:
            with pytest.raises(RunPodRejected) as info:
                await client.run("ep", {})
            return info.value.status_code
        finally:
            await client.aclose()

    assert asyncio.run(go()) == 401 and len(calls) == 1


def test_a_task_whose_params_break_the_builder_fails_alone_and_its_batch_goes_on():
    """A poison row (params nested deeper than Python reads) is failed; the others are built."""
    from datetime import datetime, timezone

    from supabase_sync.jobs import BuiltJob, JobBuilder
    from supabase_sync.store import ClaimedTask
    from supabase_sync.templates import TemplateCatalog

    deep: object = "x"
    for _ in range(5000):
        deep = [deep]
    route = Route(endpoint_id="e", task_types=["comfy"])
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    tasks = [ClaimedTask(task_id=uuid.uuid4(), task_type="comfy", params=params, attempts=1, max_attempts=3,
                         lease_token=uuid.uuid4(), created_at=datetime.now(timezone.utc))
             for params in ({"workflow": workflow, "extra": deep}, {"workflow": workflow})]
    built = asyncio.run(JobBuilder(store=None, catalog=TemplateCatalog([], None)).build(route, tasks))
    assert isinstance(built[0], InvalidTaskParams) and "nested too deeply" in str(built[0])
    assert isinstance(built[1], BuiltJob) and built[1].input["workflow"] == workflow


def test_template_folders_come_from_workflow_template_dirs_and_check_config_names_a_missing_one(capsys, monkeypatch, tmp_path):
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WORKFLOW_TEMPLATE_DIRS", f"{tmp_path}: /nowhere/templates :")
    assert [str(p) for p in Settings.from_env().template_dirs] == [str(tmp_path), "/nowhere/templates"]
    assert main(["check-config"]) == 2
    assert "WORKFLOW_TEMPLATE_DIRS: not a folder: /nowhere/templates" in capsys.readouterr().err
    monkeypatch.setenv("WORKFLOW_TEMPLATE_DIRS", str(tmp_path))
    assert main(["check-config"]) == 0
    assert f"templates: {tmp_path}, then the workflow_templates table" in capsys.readouterr().out


def test_on_a_passthrough_route_template_is_left_alone_but_output_references_are_resolved():
    from supabase_sync.jobs import Lookups
    from supabase_sync.store import DependencyOutput

    route = Route(endpoint_id="e", task_types=["vace"])
    task, dep = uuid.uuid4(), uuid.uuid4()
    params = {"template": "wan_i2v", "args": {"image": {"from_task": str(dep)}}}
    # a passthrough worker's own `template` param is its business, not a workflow template
    row = DependencyOutput(task_id=task, from_task=dep, declared=True, status="complete",
                           output_url="https://cdn.test/v.mp4", outputs=[])
    job = build_job_input(task, "vace", params, route, Lookups(outputs={task: {dep: row}}))
    assert job["template"] == "wan_i2v" and job["args"] == {"image": "https://cdn.test/v.mp4"}
    with pytest.raises(InvalidTaskParams, match=f"params.args.image: task {dep} does not exist"):
        build_job_input(task, "vace", params, route)


@pytest.mark.parametrize("error", [
    json.dumps({"error_type": "invalid_input", "error_message": "workflow.1: class_type is missing"}),
    json.dumps({"error": "workflow.1: class_type is missing", "error_type": "invalid_input"}),
    {"error_type": "invalid_input", "error_message": "workflow.1: class_type is missing"},
])
def test_a_permanent_error_given_as_json_in_the_jobs_error_is_read_as_permanent(error):
    outcome = interpret_status(JobStatus(id="j", status="FAILED", error=error))
    assert (outcome.kind, outcome.retryable) == ("fail", False)
    assert outcome.error == "invalid_input: workflow.1: class_type is missing"


PERMANENT = ["invalid_input", "invalid_workflow", "prompt_rejected", "input_too_large", "input_url_refused",
             "model_url_refused", "model_sha256_mismatch", "output_too_large"]
RETRYABLE = ["job_error", "execution_error", "interrupted", "timeout", "cancelled", "comfy_unavailable",
             "input_write_failed", "output_error", "input_download", "model_download", "model_cache_full",
             "model_cache_unavailable", "model_conflict", "upload_failed",
             "invalid_settings"]  # the worker's own settings: another worker may have others


def _worker_error_types() -> set[str]:
    """Every error_type the worker can end a job with (each JobError subclass it defines)."""
    import importlib
    import pkgutil

    import comfy

    for module in pkgutil.walk_packages(comfy.__path__, "comfy."):  # each part defines its own errors
        importlib.import_module(module.name)
    from comfy.errors import JobError

    found, todo = set(), [JobError]
    while todo:
        cls = todo.pop()
        found.add(cls.error_type)
        todo.extend(cls.__subclasses__())
    return found


def test_every_worker_error_type_is_either_permanent_or_retried_and_the_permanent_ones_are_not_retried():
    from supabase_sync.jobs import PERMANENT_ERROR_TYPES

    known = _worker_error_types()
    assert set(PERMANENT) | set(RETRYABLE) | {"superseded"} == known  # a new error type must be sorted here
    assert PERMANENT_ERROR_TYPES == set(PERMANENT) | {"superseded"}
    for error_type in PERMANENT:
        outcome = interpret_status(JobStatus(id="j", status="FAILED", error="boom",
                                             output={"error": "boom", "error_type": error_type}))
        assert (outcome.kind, outcome.retryable) == ("fail", False), error_type
        assert outcome.error.startswith(f"{error_type}: "), outcome.error
    for error_type in RETRYABLE:
        outcome = interpret_status(JobStatus(id="j", status="FAILED", error=json.dumps(
            {"error": "boom", "error_type": error_type})))
        assert (outcome.kind, outcome.retryable) == ("fail", True), error_type


def test_a_superseded_job_is_never_written_back():
    outcome = interpret_status(JobStatus(id="j", status="FAILED", error="job j no longer holds task t: the task is "
                                         "complete; nothing was run", output={"error_type": "superseded"}))
    assert outcome.kind == "superseded" and not outcome.retryable


def test_job_input_carries_the_claims_lease_token_for_the_workers_fence():
    lease = uuid.uuid4()
    comfy = build_job_input(TASK, "comfy", {"workflow": {"1": {"class_type": "X"}}},
                            Route(endpoint_id="e", task_types=["comfy"]), lease_token=lease)
    wan = build_job_input(TASK, "vace", {"prompt": "p"}, Route(endpoint_id="e", task_types=["vace"]), lease_token=lease)
    assert comfy["lease_token"] == wan["lease_token"] == str(lease)
    assert comfy["task_id"] == wan["task_id"] == str(TASK)


def test_a_claim_batch_above_supabases_max_rows_is_refused(capsys, monkeypatch):
    with pytest.raises(ConfigError, match=r"CLAIM_BATCH=1500 is above SUPABASE_MAX_ROWS=1000 .*'Max rows'"):
        Settings.from_env({**BASE_ENV, "CLAIM_BATCH": "1500"})
    with pytest.raises(ConfigError, match="CLAIM_BATCH=200 is above SUPABASE_MAX_ROWS=100"):
        Settings.from_env({**BASE_ENV, "CLAIM_BATCH": "200", "SUPABASE_MAX_ROWS": "100"})
    assert Settings.from_env({**BASE_ENV, "CLAIM_BATCH": "2000", "SUPABASE_MAX_ROWS": "5000"}).claim_batch == 2000
    for key, value in {**BASE_ENV, "CLAIM_BATCH": "1001"}.items():
        monkeypatch.setenv(key, value)
    assert main(["check-config"]) == 2
    assert "CLAIM_BATCH=1001 is above SUPABASE_MAX_ROWS=1000" in capsys.readouterr().err


def test_metrics_name_at_most_a_few_unrouted_task_types():
    from supabase_sync.metrics import MAX_UNROUTED_TYPE_SERIES, OTHER_TYPES, Metrics
    from supabase_sync.store import QueueStat

    stats = [QueueStat(task_type=f"odd-{n}", status="queued", tasks=1 + n % 7, oldest_created_at=None)
             for n in range(3000)]
    stats += [QueueStat(task_type="comfy", status="queued", tasks=5, oldest_created_at=None),
              QueueStat(task_type="comfy", status="in_progress", tasks=2, oldest_created_at=None)]
    text = Metrics().render(stats, routed_types=["comfy", "vace"])
    depth = [line for line in text.splitlines() if line.startswith("supabase_sync_queue_depth{")]
    assert len(depth) == 2 + MAX_UNROUTED_TYPE_SERIES + 1
    assert 'supabase_sync_queue_depth{status="queued",task_type="comfy"} 5' in depth
    total = sum(int(line.rsplit(" ", 1)[1]) for line in depth)
    assert total == sum(s.tasks for s in stats)  # nothing dropped: the rest is summed
    assert any(f'task_type="{OTHER_TYPES}"' in line for line in depth)
