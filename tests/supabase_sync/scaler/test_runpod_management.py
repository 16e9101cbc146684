"""The management API client against the management API double, over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from supabase_sync.scaler.runpod_management import ManagementApiError, RunpodManagementClient
from supabase_sync.scaler.rule import WorkerLimits
from tests.doubles.runpod_management import ManagementApi, ManagementServer


@pytest.fixture()
def management():
    api = ManagementApi(api_key="k-test")
    api.add_endpoint("ep1", workers_min=0, workers_max=3, idle_timeout_s=5)
    server = ManagementServer(api).start()
    yield api, server
    server.stop()


def recorder(sleeps: list[float]):
    async def sleep(seconds: float) -> None:  # records the backoff instead of waiting it out
        sleeps.append(seconds)

    return sleep


def client_for(server: ManagementServer, sleeps: list[float], **kwargs) -> RunpodManagementClient:
    return RunpodManagementClient("k-test", base_url=server.url, sleep=recorder(sleeps), **kwargs)


def run(coro):
    return asyncio.run(coro)


def test_reads_the_current_workers(management):
    api, server = management
    assert run(client_for(server, []).get_workers("ep1")) == WorkerLimits(0, 3, idle_timeout_s=5)


def test_sets_min_and_max_and_leaves_idle_timeout_alone_when_not_given(management):
    api, server = management
    reported = run(client_for(server, []).set_workers("ep1", WorkerLimits(2, 6)))
    assert reported == WorkerLimits(2, 6, idle_timeout_s=5)
    assert api.patches("ep1")[-1].body == {"workers": {"min": 2, "max": 6}}
    assert api.workers("ep1") == {"min": 2, "max": 6, "idleTimeout": 5}


def test_sets_idle_timeout_when_given(management):
    api, server = management
    run(client_for(server, []).set_workers("ep1", WorkerLimits(1, 4, idle_timeout_s=60)))
    assert api.workers("ep1") == {"min": 1, "max": 4, "idleTimeout": 60}


def test_429_is_retried_honouring_retry_after(management):
    api, server = management
    api.fail_next(2, status=429, retry_after=0.25)
    sleeps: list[float] = []
    run(client_for(server, sleeps, attempts=3, backoff_s=0.01).set_workers("ep1", WorkerLimits(1, 3)))
    assert api.workers("ep1")["min"] == 1
    assert len(sleeps) == 2 and all(s >= 0.25 for s in sleeps)


def test_5xx_retried_then_raised_after_the_last_attempt(management):
    api, server = management
    api.fail_next(3, status=503)
    sleeps: list[float] = []
    with pytest.raises(ManagementApiError, match="failed after 3 attempts: HTTP 503") as err:
        run(client_for(server, sleeps, attempts=3, backoff_s=0.01).set_workers("ep1", WorkerLimits(2, 3)))
    assert err.value.status_code == 503 and err.value.endpoint_id == "ep1"
    assert len(sleeps) == 2
    assert api.workers("ep1")["min"] == 0 and api.patches() == []


def test_client_errors_are_not_retried(management):
    api, server = management
    sleeps: list[float] = []
    with pytest.raises(ManagementApiError, match="refused: HTTP 404") as err:
        run(client_for(server, sleeps).set_workers("nope", WorkerLimits(1, 3)))
    assert err.value.status_code == 404 and sleeps == []
    assert len(api.requests) == 1


def test_wrong_api_key_is_refused_without_retry(management):
    api, server = management
    client = RunpodManagementClient("other-key", base_url=server.url, sleep=recorder([]))
    with pytest.raises(ManagementApiError, match="HTTP 403"):
        run(client.get_workers("ep1"))


def test_unreachable_api_is_a_management_error():
    sleeps: list[float] = []
    client = RunpodManagementClient("k", base_url="http://127.0.0.1:9", sleep=recorder(sleeps), attempts=2, backoff_s=0.01)
    with pytest.raises(ManagementApiError, match="ConnectError"):
        run(client.get_workers("ep1"))
    assert len(sleeps) == 1


def test_from_env_requires_the_api_key():
    with pytest.raises(ValueError, match="RUNPOD_API_KEY is not set"):
        RunpodManagementClient.from_env({})


def test_from_env_takes_the_key_and_base_url(management):
    api, server = management
    client = RunpodManagementClient.from_env({"RUNPOD_API_KEY": "k-test", "RUNPOD_MANAGEMENT_URL": server.url + "/"})
    assert run(client.get_workers("ep1")).max == 3
