"""Scaler settings: endpoints from the dispatcher's routes, rules from env and file, clear errors."""

from __future__ import annotations

import json

import pytest

from supabase_sync.config import ConfigError
from supabase_sync.scaler.config import ScalerSettings

BASE = {
    "SUPABASE_URL": "http://127.0.0.1:1",
    "SUPABASE_SERVICE_ROLE_KEY": "service-key",
    "RUNPOD_API_KEY": "runpod-key",
    "DISPATCHER_ROUTES": "comfy=EPA;vace,flux=EPB",
}


def load(**env: str) -> ScalerSettings:
    return ScalerSettings.from_env({**BASE, **env})


def rules_file(tmp_path, data) -> str:
    path = tmp_path / "scaler.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_endpoints_and_their_task_types_come_from_the_dispatcher_routes():
    settings = load()
    assert [(e.endpoint_id, e.task_types) for e in settings.endpoints] == [("EPA", ("comfy",)), ("EPB", ("vace", "flux"))]
    assert settings.interval_s == 30 and settings.management_url == "https://api.runpod.io"


def test_routes_sharing_an_endpoint_are_one_endpoint_with_all_their_types(tmp_path):
    routes = {"routes": [{"endpoint_id": "EPA", "task_types": ["comfy"]},
                         {"endpoint_id": "EPA", "task_types": ["vace"]}]}
    env = {k: v for k, v in BASE.items() if k != "DISPATCHER_ROUTES"}
    settings = ScalerSettings.from_env({**env, "DISPATCHER_ROUTES_FILE": rules_file(tmp_path, routes)})
    assert [(e.endpoint_id, e.task_types) for e in settings.endpoints] == [("EPA", ("comfy", "vace"))]


def test_low_priority_routes_are_backlog_types(tmp_path):
    routes = {"routes": [{"endpoint_id": "EPA", "task_types": ["comfy"]},
                         {"endpoint_id": "EPA", "task_types": ["t2v"], "low_priority": True}]}
    env = {k: v for k, v in BASE.items() if k != "DISPATCHER_ROUTES"}
    [epa] = ScalerSettings.from_env({**env, "DISPATCHER_ROUTES_FILE": rules_file(tmp_path, routes)}).endpoints
    assert (epa.task_types, epa.backlog_task_types) == (("comfy",), ("t2v",))


def test_env_sets_every_endpoint_and_the_file_overrides_per_endpoint(tmp_path):
    path = rules_file(tmp_path, {"defaults": {"keep_idle": 1},
                                 "endpoints": {"EPB": {"max_workers": 8, "scale_down_grace_s": 10}}})
    settings = load(SCALER_MAX_WORKERS="4", SCALER_SCALE_UP_MULTIPLIER="0.5", SCALER_RULES_FILE=path,
                    SCALER_INTERVAL_S="5", RUNPOD_MANAGEMENT_URL="http://127.0.0.1:2")
    epa, epb = (e.rule for e in settings.endpoints)
    assert (epa.max_workers, epa.scale_up_multiplier, epa.keep_idle, epa.scale_down_grace_s) == (4, 0.5, 1, 120)
    assert (epb.max_workers, epb.scale_up_multiplier, epb.keep_idle, epb.scale_down_grace_s) == (8, 0.5, 1, 10)
    assert settings.interval_s == 5 and settings.management_url == "http://127.0.0.1:2"


def test_min_above_max_in_the_env_may_be_fixed_per_endpoint(tmp_path):
    path = rules_file(tmp_path, {"endpoints": {"EPA": {"max_workers": 10}, "EPB": {"max_workers": 10}}})
    settings = load(SCALER_MIN_WORKERS="5", SCALER_RULES_FILE=path)
    assert [e.rule.min_workers for e in settings.endpoints] == [5, 5]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCALER_MAX_WORKERS": "many"}, "SCALER_MAX_WORKERS: Input should be a valid integer"),
        ({"SCALER_KEEP_IDLE": "-1"}, "SCALER_KEEP_IDLE: Input should be greater than or equal to 0"),
        ({"SCALER_SCALE_UP_MULTIPLIER": "0"}, "SCALER_SCALE_UP_MULTIPLIER: Input should be greater than 0"),
        ({"SCALER_MIN_WORKERS": "4"}, "scaling rule of endpoint EPA: min_workers (4) is above max_workers (3)"),
        ({"SCALER_INTERVAL_S": "0"}, "SCALER_INTERVAL_S: Input should be greater than 0"),
        ({"RUNPOD_API_KEY": ""}, "missing environment variables: RUNPOD_API_KEY"),
    ],
)
def test_bad_environment_names_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        load(**env)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"endpoint": {}}, "SCALER_RULES_FILE endpoint: not a key"),
        ({"defaults": {"grace": 5}}, "SCALER_RULES_FILE defaults.grace: Extra inputs are not permitted"),
        ({"endpoints": {"EPA": {"max_workers": "lots"}}}, "SCALER_RULES_FILE endpoints.EPA.max_workers: Input should be a valid integer"),
        ({"endpoints": {"EPA": 3}}, "SCALER_RULES_FILE endpoints: must map endpoint ids to objects"),
        ({"endpoints": {"EPZ": {}}}, "SCALER_RULES_FILE endpoints.EPZ: not an endpoint of the dispatcher's routes (routed endpoints: EPA, EPB)"),
        ({"endpoints": {"EPB": {"min_workers": 5}}}, "scaling rule of endpoint EPB: min_workers (5) is above max_workers (3)"),
    ],
)
def test_bad_rules_file_names_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        load(SCALER_RULES_FILE=rules_file(tmp_path, data))
    assert message in str(info.value)


def test_missing_rules_file_is_an_error():
    with pytest.raises(ConfigError, match="SCALER_RULES_FILE /nonexistent/scaler.json: No such file"):
        load(SCALER_RULES_FILE="/nonexistent/scaler.json")
