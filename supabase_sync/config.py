"""Dispatcher settings from the environment, and the routes task_type -> RunPod endpoint.

Routes come from DISPATCHER_ROUTES_FILE (JSON, every option) or DISPATCHER_ROUTES (compact:
`comfy=ENDPOINT_A;vace,flux,t2v,i2v=ENDPOINT_B`). A route whose only task type is `comfy`
builds ComfyUI job input; any other route passes the task's params through unchanged.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """The configuration is missing something or has a bad value; the message says which."""


class OutputDelivery(BaseModel):
    """Where the worker should upload outputs; the prefix gets `/<task_id>` appended."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["supabase", "s3", "inline"] = "supabase"
    bucket: str | None = None
    prefix: str = "tasks"

    @model_validator(mode="after")
    def _bucket_for_uploads(self) -> "OutputDelivery":
        if self.mode != "inline" and not self.bucket:
            raise ValueError(f"output mode {self.mode!r} needs a bucket")
        return self


class Route(BaseModel):
    """Which task types go to which RunPod endpoint, and how."""

    model_config = ConfigDict(extra="forbid")

    endpoint_id: str = Field(min_length=1, description="RunPod serverless endpoint id")
    task_types: list[str] = Field(min_length=1)
    kind: Literal["comfy", "passthrough"] | None = Field(
        default=None, description="comfy: ComfyUI job input from the seed's params; passthrough: params as they are"
    )
    max_in_flight: int = Field(default=20, ge=1, description="tasks submitted and not finished, across dispatchers")
    execution_timeout_s: float | None = Field(default=900, gt=0, description="RunPod policy.executionTimeout")
    ttl_s: float | None = Field(default=None, gt=0, description="RunPod policy.ttl (job's whole life)")
    low_priority: bool = False
    output: OutputDelivery | None = None

    @model_validator(mode="after")
    def _default_kind(self) -> "Route":
        if self.kind is None:
            self.kind = "comfy" if self.task_types == ["comfy"] else "passthrough"
        return self

    def policy(self) -> dict[str, object]:
        """RunPod's /run `policy` (milliseconds)."""
        policy: dict[str, object] = {}
        if self.execution_timeout_s:
            policy["executionTimeout"] = int(self.execution_timeout_s * 1000)
        if self.ttl_s:
            policy["ttl"] = int(self.ttl_s * 1000)
        if self.low_priority:
            policy["lowPriority"] = True
        return policy


class RoutingTable(BaseModel):
    """All routes; a task type may appear in one route only."""

    model_config = ConfigDict(extra="forbid")

    routes: list[Route] = Field(min_length=1)
    unknown_task_types: Literal["leave_queued", "fail"] = "leave_queued"

    @model_validator(mode="after")
    def _one_route_per_type(self) -> "RoutingTable":
        seen: dict[str, str] = {}
        for route in self.routes:
            for task_type in route.task_types:
                if task_type in seen:
                    raise ValueError(
                        f"task_type {task_type!r} is routed twice (endpoints {seen[task_type]} and {route.endpoint_id})"
                    )
                seen[task_type] = route.endpoint_id
        return self

    @property
    def task_types(self) -> list[str]:
        return [t for route in self.routes for t in route.task_types]

    def route_for(self, task_type: str) -> Route | None:
        return next((r for r in self.routes if task_type in r.task_types), None)


def parse_compact_routes(text: str) -> list[Route]:
    """`comfy=EP1;vace,flux=EP2` -> routes (defaults for everything else)."""
    routes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        types, sep, endpoint = part.partition("=")
        task_types = [t.strip() for t in types.split(",") if t.strip()]
        if not sep or not endpoint.strip() or not task_types:
            raise ConfigError(
                f"DISPATCHER_ROUTES: {part!r} is not `type[,type...]=ENDPOINT_ID` (example: comfy=abc123;vace,flux=def456)"
            )
        routes.append(Route(endpoint_id=endpoint.strip(), task_types=task_types))
    return routes


class Settings(BaseModel):
    """Everything the dispatcher reads from its environment."""

    model_config = ConfigDict(extra="forbid")

    supabase_url: str
    supabase_key: str = Field(repr=False)
    runpod_api_key: str = Field(repr=False)
    runpod_api_base_url: str = "https://api.runpod.ai/v2"
    routing: RoutingTable
    dispatcher_id: str
    poll_interval_s: float = Field(default=5.0, gt=0, description="the seed's POLL_INTERVAL")
    status_check_s: float = Field(default=30.0, gt=0, description="poll /status when no webhook came in this long")
    claim_lease_s: float = Field(default=60.0, gt=0)
    claim_batch: int = Field(default=50, ge=1)
    max_rows: int = Field(default=1000, ge=1, description="the project's API 'Max rows': PostgREST's cap on RPC answers")
    retry_backoff_base_s: float = Field(default=10.0, ge=0)
    retry_backoff_max_s: float = Field(default=600.0, ge=0)
    heartbeat_s: float = Field(default=15.0, gt=0)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(default=None, description="base URL RunPod can reach for webhooks")
    webhook_secret: str | None = Field(default=None, repr=False)
    trigger_secret: str | None = Field(default=None, repr=False)
    template_dirs: list[Path] = Field(default_factory=list, description="template folders, first wins (then the table)")
    database_url: str | None = Field(default=None, repr=False,
                                     description="direct or session-pooler connection: LISTEN wake-up, migrate")
    migrate_on_start: bool = Field(default=False, description="apply pending migrations before dispatching")

    @model_validator(mode="after")
    def _settings_that_need_others(self) -> "Settings":
        if self.public_url and not self.webhook_secret:
            raise ValueError("DISPATCHER_PUBLIC_URL is set but WEBHOOK_SECRET is not: webhooks must be signed")
        if self.migrate_on_start and not self.database_url:
            raise ValueError("MIGRATE_ON_START is true but DATABASE_URL is not set: migrations need a direct connection")
        return self

    def wakeup_description(self) -> str:
        """How new tasks reach this dispatcher, for check-config."""
        ways = []
        if self.database_url:
            from supabase_sync.database import describe

            ways.append(f"LISTEN on {describe(self.database_url)}")
        if self.trigger_secret:
            ways.append("POST /hooks/supabase (pg_net trigger)")
        ways.append(f"poll every {self.poll_interval_s:g} s")
        return ", ".join(ways)

    @model_validator(mode="after")
    def _claims_fit_in_one_answer(self) -> "Settings":
        # PostgREST cuts a set-returning answer at Max rows AFTER the function ran: rows
        # claimed beyond the cap would be in_progress with nobody submitting them.
        if self.claim_batch > self.max_rows:
            raise ValueError(
                f"CLAIM_BATCH={self.claim_batch} is above SUPABASE_MAX_ROWS={self.max_rows} (the project's API "
                "'Max rows' setting): PostgREST returns at most that many rows, and the claimed rows beyond it "
                "would stay in_progress, unsubmitted, until their lease expires; lower CLAIM_BATCH, or raise Max rows "
                "in Supabase (Settings > API) and SUPABASE_MAX_ROWS with it"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings; raise ConfigError naming every missing or bad variable."""
        env = os.environ if env is None else env
        missing = [k for k in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "RUNPOD_API_KEY") if not env.get(k)]
        if not env.get("DISPATCHER_ROUTES") and not env.get("DISPATCHER_ROUTES_FILE"):
            missing.append("DISPATCHER_ROUTES or DISPATCHER_ROUTES_FILE")
        if missing:
            raise ConfigError("missing environment variables: " + ", ".join(missing))
        routing = _routing_from_env(env)
        values: dict[str, object] = {
            "supabase_url": env["SUPABASE_URL"],
            "supabase_key": env["SUPABASE_SERVICE_ROLE_KEY"],
            "runpod_api_key": env["RUNPOD_API_KEY"],
            "routing": routing,
            "dispatcher_id": env.get("DISPATCHER_ID") or f"dispatcher-{socket.gethostname()}-{os.getpid()}",
        }
        optional = {
            "RUNPOD_API_BASE_URL": "runpod_api_base_url",
            "POLL_INTERVAL": "poll_interval_s",
            "STATUS_CHECK_INTERVAL": "status_check_s",
            "CLAIM_LEASE_S": "claim_lease_s",
            "CLAIM_BATCH": "claim_batch",
            "SUPABASE_MAX_ROWS": "max_rows",
            "RETRY_BACKOFF_BASE_S": "retry_backoff_base_s",
            "RETRY_BACKOFF_MAX_S": "retry_backoff_max_s",
            "HEARTBEAT_INTERVAL": "heartbeat_s",
            "DISPATCHER_HOST": "listen_host",
            "DISPATCHER_PORT": "listen_port",
            "DISPATCHER_PUBLIC_URL": "public_url",
            "WEBHOOK_SECRET": "webhook_secret",
            "TRIGGER_SECRET": "trigger_secret",
            "DATABASE_URL": "database_url",
            "MIGRATE_ON_START": "migrate_on_start",
        }
        if env.get("WORKFLOW_TEMPLATE_DIRS"):
            values["template_dirs"] = template_dirs(env["WORKFLOW_TEMPLATE_DIRS"])
        names = {}
        for var, field in optional.items():
            if env.get(var):
                values[field] = env[var]
                names[field] = var
        if values.get("database_url"):
            from supabase_sync.database import DatabaseUrlError, check_url

            try:
                check_url(str(values["database_url"]))
            except DatabaseUrlError as exc:
                raise ConfigError(str(exc)) from None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, names)) from None


def template_dirs(text: str) -> list[Path]:
    """WORKFLOW_TEMPLATE_DIRS: folders separated by ':' (os.pathsep), in precedence order."""
    return [Path(part.strip()) for part in text.split(os.pathsep) if part.strip()]


def _routing_from_env(env: Mapping[str, str]) -> RoutingTable:
    try:
        if env.get("DISPATCHER_ROUTES_FILE"):
            path = Path(env["DISPATCHER_ROUTES_FILE"])
            try:
                data = json.loads(path.read_text())
            except OSError as exc:
                raise ConfigError(f"DISPATCHER_ROUTES_FILE {path}: {exc.strerror}") from None
            except json.JSONDecodeError as exc:
                raise ConfigError(f"DISPATCHER_ROUTES_FILE {path}: not valid JSON ({exc})") from None
            return RoutingTable.model_validate(data)
        return RoutingTable(
            routes=parse_compact_routes(env["DISPATCHER_ROUTES"]),
            unknown_task_types=env.get("UNKNOWN_TASK_TYPES", "leave_queued"),
        )
    except ValidationError as exc:
        raise ConfigError("routes: " + _explain(exc, {})) from None


def _explain(exc: ValidationError, names: dict[str, str]) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = names.get(loc[0], ".".join(loc)) if loc else "settings"
        problems.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
