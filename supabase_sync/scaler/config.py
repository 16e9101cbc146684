"""The scaler's settings: which endpoints to size, with which rule, and how often.

The endpoints and their task types are the dispatcher's routes (DISPATCHER_ROUTES or
DISPATCHER_ROUTES_FILE, read by `supabase_sync.config`), so both always agree. Each
endpoint's rule is, from the lowest precedence to the highest:

1. the built-in defaults of `ScalingRule`;
2. SCALER_MIN_WORKERS, SCALER_MAX_WORKERS, SCALER_SCALE_UP_MULTIPLIER, SCALER_KEEP_IDLE,
   SCALER_SCALE_DOWN_GRACE_S, SCALER_IDLE_TIMEOUT_S (every endpoint);
3. SCALER_RULES_FILE, JSON: `{"defaults": {<rule>}, "endpoints": {"<endpoint id>": {<rule>}}}`
   with the rule's field names (min_workers, max_workers, scale_up_multiplier, keep_idle,
   scale_down_grace_s, idle_timeout_s).

Anything malformed raises `ConfigError` at start-up naming the variable or the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supabase_sync.config import ConfigError, Settings
from supabase_sync.scaler.runpod_management import DEFAULT_MANAGEMENT_URL
from supabase_sync.scaler.rule import ScalingRule

RULE_ENV = {
    "SCALER_MIN_WORKERS": "min_workers",
    "SCALER_MAX_WORKERS": "max_workers",
    "SCALER_SCALE_UP_MULTIPLIER": "scale_up_multiplier",
    "SCALER_KEEP_IDLE": "keep_idle",
    "SCALER_SCALE_DOWN_GRACE_S": "scale_down_grace_s",
    "SCALER_IDLE_TIMEOUT_S": "idle_timeout_s",
}


class ScaledEndpoint(BaseModel):
    """One RunPod endpoint to size: the task types routed to it and its rule."""

    model_config = ConfigDict(frozen=True)

    endpoint_id: str
    task_types: tuple[str, ...]  # their queue makes the endpoint scale
    rule: ScalingRule
    backlog_task_types: tuple[str, ...] = ()  # low_priority routes: served, never a reason to scale


class ScalerSettings(BaseModel):
    """Everything `python -m supabase_sync scale` reads from its environment."""

    model_config = ConfigDict(extra="forbid")

    dispatcher: Settings = Field(description="Supabase and RunPod credentials, RunPod base URL and routes")
    management_url: str = DEFAULT_MANAGEMENT_URL
    interval_s: float = Field(30.0, gt=0, description="seconds between passes")
    endpoints: list[ScaledEndpoint] = Field(min_length=1)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ScalerSettings":
        """Read and check everything; raise ConfigError naming each bad variable or key."""
        dispatcher = Settings.from_env(env)
        env_rule = _rule_fields_from_env(env)
        file_defaults, file_endpoints = _rules_file(env.get("SCALER_RULES_FILE"))

        task_types: dict[str, list[str]] = {}
        backlog: dict[str, list[str]] = {}
        for route in dispatcher.routing.routes:
            task_types.setdefault(route.endpoint_id, [])
            backlog.setdefault(route.endpoint_id, [])
            (backlog if route.low_priority else task_types)[route.endpoint_id].extend(route.task_types)
        unknown = sorted(set(file_endpoints) - set(task_types))
        if unknown:
            raise ConfigError(
                f"SCALER_RULES_FILE endpoints.{unknown[0]}: not an endpoint of the dispatcher's routes "
                f"(routed endpoints: {', '.join(sorted(task_types))})"
            )

        endpoints = []
        for endpoint_id, types in task_types.items():
            fields = {**env_rule, **file_defaults, **file_endpoints.get(endpoint_id, {})}
            try:
                rule = ScalingRule.model_validate(fields)
            except ValidationError as exc:
                raise ConfigError(f"scaling rule of endpoint {endpoint_id}: {_explain(exc, _rule_sources(env))}") from None
            endpoints.append(ScaledEndpoint(endpoint_id=endpoint_id, task_types=tuple(types), rule=rule,
                                            backlog_task_types=tuple(backlog[endpoint_id])))

        values: dict[str, Any] = {"dispatcher": dispatcher, "endpoints": endpoints}
        names: dict[str, str] = {}
        if env.get("RUNPOD_MANAGEMENT_URL"):
            values["management_url"], names["management_url"] = env["RUNPOD_MANAGEMENT_URL"], "RUNPOD_MANAGEMENT_URL"
        if env.get("SCALER_INTERVAL_S"):
            values["interval_s"], names["interval_s"] = env["SCALER_INTERVAL_S"], "SCALER_INTERVAL_S"
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, names)) from None


def _rule_fields_from_env(env: Mapping[str, str]) -> dict[str, str]:
    fields = {field: env[var] for var, field in RULE_ENV.items() if env.get(var)}
    try:
        ScalingRule.model_validate(fields)
    except ValidationError as exc:
        # Type errors are the variable's fault; min above max may be fixed per endpoint.
        bad = [e for e in exc.errors(include_url=False) if e["loc"]]
        if bad:
            raise ConfigError(_explain_errors(bad, _rule_sources(env))) from None
    return fields


def _rule_sources(env: Mapping[str, str]) -> dict[str, str]:
    return {field: var for var, field in RULE_ENV.items() if env.get(var)}


def _rules_file(path_text: str | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not path_text:
        return {}, {}
    path = Path(path_text)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"SCALER_RULES_FILE {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"SCALER_RULES_FILE {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"SCALER_RULES_FILE {path}: must be a JSON object with `defaults` and/or `endpoints`")
    extra = sorted(set(data) - {"defaults", "endpoints"})
    if extra:
        raise ConfigError(f"SCALER_RULES_FILE {extra[0]}: not a key (expected `defaults` and/or `endpoints`)")
    defaults = data.get("defaults", {})
    endpoints = data.get("endpoints", {})
    if not isinstance(defaults, dict):
        raise ConfigError("SCALER_RULES_FILE defaults: must be an object of rule fields")
    if not isinstance(endpoints, dict) or not all(isinstance(v, dict) for v in endpoints.values()):
        raise ConfigError("SCALER_RULES_FILE endpoints: must map endpoint ids to objects of rule fields")
    for where, fields in [("defaults", defaults), *((f"endpoints.{k}", v) for k, v in endpoints.items())]:
        try:
            ScalingRule.model_validate(fields)
        except ValidationError as exc:
            # Field-level errors name their key; min above max is checked after the merge.
            bad = [e for e in exc.errors(include_url=False) if e["loc"]]
            if bad:
                raise ConfigError(f"SCALER_RULES_FILE {where}." + _explain_errors(bad, {})) from None
    return defaults, endpoints


def _explain(exc: ValidationError, names: Mapping[str, str]) -> str:
    return _explain_errors(exc.errors(include_url=False), names)


def _explain_errors(errors: list[Any], names: Mapping[str, str]) -> str:
    problems = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        where = names.get(loc[0], ".".join(loc)) if loc else ""
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
