"""Dockerfile.dispatcher and the files that run it (compose, Fly, Railway, systemd) agree with each
other and with the code. No Docker engine here: the image is linted (scripts/lint.sh) and its
requirements tested (test_image_requirements.py, tests/supabase_sync/test_image_runtime.py), not built."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile.dispatcher").read_text()
FINAL_STAGE = DOCKERFILE.replace("\\\n", " ").rsplit("\nFROM ", 1)[1]
RUN_DISPATCHER = ["python", "-m", "supabase_sync"]
MIGRATE_PRE = "python -m supabase_sync migrate --pre"


def instructions(name: str, text: str = FINAL_STAGE) -> list[str]:
    return re.findall(rf"^{name} (.*)$", text, flags=re.M)


def test_the_image_is_a_slim_python_with_only_the_dispatchers_files():
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim-\w+$", DOCKERFILE, re.M)
    copied = [c.split()[:-1] for c in re.findall(r"^COPY (.*)$", DOCKERFILE, re.M)]
    sources = {s for c in copied for s in c if not s.startswith("--")}
    assert sources == {"pyproject.toml", "builder/image_requirements.py", "builder/dispatcher-constraints.txt",
                       "supabase_sync", "templates", "/opt/venv"}
    assert "--image dispatcher" in DOCKERFILE and "-c /builder/dispatcher-constraints.txt" in DOCKERFILE
    ignore = (ROOT / "Dockerfile.dispatcher.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "builder/image_requirements.py", "builder/dispatcher-constraints.txt",
                       "supabase_sync", "templates"}


def test_it_runs_as_a_numeric_non_root_user_after_the_last_root_step():
    [user] = instructions("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()
    assert FINAL_STAGE.index("USER ") > FINAL_STAGE.rindex("RUN ")
    assert f"--uid {uid}" in FINAL_STAGE


def test_its_command_healthcheck_and_port_are_the_dispatchers():
    [cmd] = instructions("CMD")
    assert json.loads(cmd) == RUN_DISPATCHER and not instructions("ENTRYPOINT")
    [health] = instructions("HEALTHCHECK")
    assert json.loads(health.split(" CMD ", 1)[1]) == [*RUN_DISPATCHER, "healthcheck"]
    env = dict(re.findall(r"([A-Z][A-Z0-9_]+)=(\S+)", " ".join(instructions("ENV"))))
    assert env["DISPATCHER_HOST"] == "0.0.0.0" and instructions("EXPOSE") == [env["DISPATCHER_PORT"]]


def test_compose_runs_the_dispatcher_and_the_scaler_from_that_image():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    dispatcher, scaler = services["dispatcher"], services["scaler"]
    assert dispatcher["build"] == {"context": ".", "dockerfile": "Dockerfile.dispatcher"}
    assert scaler["image"] == dispatcher["image"] and scaler["command"] == [*RUN_DISPATCHER, "scale"]
    assert scaler["healthcheck"] == {"disable": True}
    assert dispatcher["ports"] == [f"127.0.0.1:{dispatcher['environment']['DISPATCHER_PORT']}:8080"]
    assert dispatcher["env_file"] == scaler["env_file"] == "dispatcher.env"
    assert "/dispatcher.env" in (ROOT / ".gitignore").read_text().splitlines()  # it holds keys
    assert "profiles" not in services["worker"]  # `docker compose up` still starts only the GPU worker


def test_fly_migrates_before_the_release_keeps_the_dispatcher_running_and_checks_its_health():
    fly = tomllib.loads((ROOT / "deploy" / "fly.toml").read_text())
    assert fly["deploy"]["release_command"] == MIGRATE_PRE
    assert fly["processes"] == {"app": " ".join(RUN_DISPATCHER), "scaler": " ".join([*RUN_DISPATCHER, "scale"])}
    service = fly["http_service"]
    assert service["internal_port"] == int(fly["env"]["DISPATCHER_PORT"]) and service["processes"] == ["app"]
    assert service["auto_stop_machines"] == "off" and service["min_machines_running"] >= 1
    assert [check["path"] for check in service["checks"]] == ["/health"]


def test_railway_builds_the_dispatcher_image_and_migrates_before_each_deploy():
    railway = json.loads((ROOT / "deploy" / "railway.json").read_text())
    assert railway["build"] == {"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile.dispatcher"}
    assert railway["deploy"]["preDeployCommand"] == [MIGRATE_PRE]
    assert railway["deploy"]["startCommand"] == " ".join(RUN_DISPATCHER)
    assert railway["deploy"]["healthcheckPath"] == "/health"


def test_the_systemd_unit_runs_each_command_unprivileged_with_the_env_file():
    unit = (ROOT / "deploy" / "systemd" / "supabase-sync@.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.M))
    assert settings["ExecStart"] == "/opt/supabase-sync/venv/bin/python -m supabase_sync %i"
    assert settings["User"] == "supabase-sync" and settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict" and settings["KillSignal"] == "SIGTERM"
    assert settings["EnvironmentFile"] == "/etc/supabase-sync/dispatcher.env"
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for path in ("/opt/supabase-sync/venv", "/opt/supabase-sync/src", "/etc/supabase-sync/dispatcher.env"):
        assert path in doc, f"docs/deploy.md does not say how {path} comes to be"


def test_the_example_settings_name_only_variables_the_code_reads_and_every_required_one():
    from tests.builder.test_deploy_doc import variables_read_by_the_code

    example = (ROOT / "deploy" / "dispatcher.env.example").read_text()
    named = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    assert named - variables_read_by_the_code() == set()
    assert {"SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "RUNPOD_API_KEY", "DISPATCHER_ROUTES", "DATABASE_URL"} <= \
        set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    assert ":6543" not in example
