"""docker-compose.yml, checked without Docker: schema, healthchecks, pinned images, loopback-only
ports, scalable consumers, and every environment variable against what the service reads."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import jsonschema
import pytest

from messaging import spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "compose" / "fixtures" / "compose-spec.json"
SERVICE_DOCKERFILE = ROOT / "deploy" / "service.Dockerfile"
# From the specs: the compose file must run every service on its own default port.
APP_SERVICES = spec.names()
CONSUMERS = tuple(s.name for s in spec.consumers())
CONTRACT_PORTS = {s.name: str(s.port) for s in spec.installed()}
# The failed-message console (apps/console) runs beside them: no spec, the same checks.
CONSOLE_SETTINGS = importlib.import_module("console.settings").Settings
CONSOLE_PORT = str(CONSOLE_SETTINGS.model_fields["port"].default)
PROCESSES = (*APP_SERVICES, "console")
PROCESS_PORTS = {**CONTRACT_PORTS, "console": CONSOLE_PORT}
# Read by the OpenTelemetry SDK itself, not by the service's Settings.
SDK_VARIABLES = re.compile(r"^OTEL_\w+$")


def _one_shot(compose: dict) -> set[str]:
    """Services others wait for to *finish* (service_completed_successfully)."""
    return {
        name
        for service in compose["services"].values()
        for name, dep in (service.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))


def test_validates_against_the_compose_specification(compose):
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(compose)]
    assert errors == []


def test_the_schema_check_can_fail(compose):
    broken = {**compose, "services": {**compose["services"], "audit": {"image": 3, "portz": []}}}
    assert list(_validator().iter_errors(broken))


def test_the_stack_has_the_designed_services(compose):
    services = set(compose["services"])
    assert {"rabbitmq", "postgres", "jaeger", "mailpit", *APP_SERVICES} <= services
    assert {"rabbitmq-2", "rabbitmq-3"} <= services
    assert {"prometheus", "grafana"} <= services
    assert "load" in services


def test_every_long_running_service_has_a_healthcheck(compose):
    one_shot = _one_shot(compose)
    assert one_shot == {"rabbitmq-definitions"}
    for name, service in compose["services"].items():
        if name in one_shot:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name}: no healthcheck"


def test_images_are_pinned_to_a_version(compose):
    for name, service in compose["services"].items():
        if "build" in service and "image" not in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"


def test_python_image_is_the_same_everywhere(compose):
    images = {compose["services"]["rabbitmq-definitions"]["image"]}
    dockerfile = SERVICE_DOCKERFILE.read_text(encoding="utf-8")
    (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    for service in APP_SERVICES:
        build_args = compose["services"][service]["build"].get("args", {})
        images.add(build_args.get("PYTHON_IMAGE", default))
    assert len(images) == 1, images


def test_every_published_port_is_bound_to_loopback(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_consumers_can_scale(compose):
    for name in CONSUMERS:
        service = compose["services"][name]
        assert "container_name" not in service, name
        assert "hostname" not in service, name
        for port in service.get("ports", []):
            _, host_port, container_port = str(port).split(":")
            first, sep, last = host_port.partition("-")
            assert sep and int(last) - int(first) >= 2, f"{name}: {port} is not a port range"
            assert container_port == CONTRACT_PORTS[name]


def test_app_services_wait_for_healthy_dependencies(compose):
    for name in PROCESSES:
        depends = compose["services"][name]["depends_on"]
        assert {"rabbitmq", "postgres", "jaeger"} <= set(depends), name
        assert all(dep["condition"] == "service_healthy" for dep in depends.values()), name
    assert compose["services"]["mailer"]["depends_on"]["mailpit"]["condition"] == "service_healthy"


def test_app_services_use_their_own_credentials_and_the_contract_ports(compose):
    for name in PROCESSES:
        env = _environment(compose["services"][name])
        assert env["PORT"] == PROCESS_PORTS[name]
        assert env["RABBITMQ_URL"].startswith(f"amqp://{name}:"), name
        assert env["RABBITMQ_URL"].endswith("@rabbitmq:5672/shop"), name
        assert re.fullmatch(
            rf"postgresql\+asyncpg://{name}:[^@]+@postgres:5432/{name}", env["DATABASE_URL"]
        ), name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env["OTEL_SERVICE_NAME"] == name
    mailer = _environment(compose["services"]["mailer"])
    assert (mailer["SMTP_HOST"], mailer["SMTP_PORT"]) == ("mailpit", "1025")


def test_env_file_is_the_single_source(compose_tools, env_file):
    """Every ${VAR} of the compose file is set in .env, and nothing in .env is unused."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    used = compose_tools.variables_used(text)
    assert used - set(env_file) == set()
    assert set(env_file) - used == {"COMPOSE_PROJECT_NAME"}  # read by compose itself


def test_a_missing_variable_is_caught(compose_tools, env_file):
    """The check above can fail: without a password the compose file does not resolve."""
    env = dict(env_file)
    del env["RABBITMQ_POINTS_PASSWORD"]
    with pytest.raises(KeyError, match="RABBITMQ_POINTS_PASSWORD"):
        compose_tools.load_compose(env)


def _dockerfile_env() -> set[str]:
    """Variables the runtime stage of the service Dockerfile sets (ENV after last FROM), the
    same for every service. SERVICE names the module its CMD runs; no Settings reads it."""
    text = SERVICE_DOCKERFILE.read_text(encoding="utf-8")
    runtime = text.rsplit("\nFROM ", 1)[1].replace("\\\n", " ")
    names = set()
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            names |= set(re.findall(r"(\w+)=", line))
    return names - {"PATH", "PYTHONUNBUFFERED", "SERVICE"}


@pytest.mark.parametrize("service", PROCESSES)
def test_every_variable_given_is_a_setting_and_every_required_setting_is_given(compose, service):
    settings = importlib.import_module(f"{service}.settings").Settings
    fields = {name.upper(): field for name, field in settings.model_fields.items()}
    given = set(_environment(compose["services"][service])) | _dockerfile_env()

    unknown = {var for var in given if var not in fields and not SDK_VARIABLES.match(var)}
    assert unknown == set(), f"{service} does not read {sorted(unknown)}"
    missing = {var for var, field in fields.items() if field.is_required() and var not in given}
    assert missing == set(), f"compose does not give {service} {sorted(missing)}"


def _seconds(duration: str) -> float:
    """A compose duration such as `1m30s`, `40s` or `500ms`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_every_node_and_service_has_time_to_stop_cleanly_before_it_is_killed(compose):
    """Docker SIGKILLs what outlives its stop_grace_period (default 10 s)."""
    from messaging.chassis.runtime import STOP_BOUND_SECONDS

    for name in ("rabbitmq", "rabbitmq-2", "rabbitmq-3"):
        assert _seconds(compose["services"][name]["stop_grace_period"]) >= 60, name
    for name in PROCESSES:
        grace = _seconds(compose["services"][name]["stop_grace_period"])
        assert grace > STOP_BOUND_SECONDS, f"{name}: {grace}s, its stop may take longer"


def test_the_console_is_built_from_apps_published_on_8005_with_credentials_from_env(compose):
    console = compose["services"]["console"]
    assert console["build"]["args"]["SOURCE_DIR"] == "apps"
    assert console["build"]["args"]["SERVICE"] == "console"
    assert console["ports"] == [f"127.0.0.1:{CONSOLE_PORT}:{CONSOLE_PORT}"]
    env = _environment(console)
    assert {env["CONSOLE_USER"], env["CONSOLE_PASSWORD"]} <= {"operator", "console-local-only"}
    assert env["CONSOLE_EDIT_AND_REPLAY"] == "off"
    # Its image holds the console alone, so it is told which DLQs to take: every consumer's.
    assert env["CONSOLE_SERVICES"].split(",") == list(CONSUMERS)
    # The overview's alerts come from the observability profile's Prometheus.
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    # It shows and steers every consumer by its compose name and port, with their token.
    assert env["CONSOLE_SERVICE_URLS"] == ",".join(
        f"{name}=http://{name}:{CONTRACT_PORTS[name]}" for name in CONSUMERS)
    assert env["ADMIN_TOKEN"] == _environment(compose["services"]["mailer"])["ADMIN_TOKEN"]


def test_durations_are_read_as_compose_reads_them():
    assert [_seconds(d) for d in ("40s", "1m30s", "500ms", "2h")] == [40, 90, 0.5, 7200]
    with pytest.raises(AssertionError):
        _seconds("40 s")


def test_the_load_profile_serves_locusts_ui_on_loopback_against_every_service(compose):
    from load.options import SERVICE_URLS  # what the scenario reads (tools/load)

    load = compose["services"]["load"]
    assert load["profiles"] == ["load"]
    assert load["ports"] == ["127.0.0.1:8089:8089"]  # LOAD_UI_PORT of .env
    command = load["command"]
    assert command[:3] == ["python", "-m", "load"] and "--web" in command
    assert command[command.index("--web-host") + 1] == "0.0.0.0"  # published on loopback only
    assert command[command.index("--host") + 1] == f"http://payment:{CONTRACT_PORTS['payment']}"
    assert _environment(load) == {variable: f"http://{name}:{CONTRACT_PORTS[name]}"
                                  for name, (variable, _) in SERVICE_URLS.items()}
    assert set(SERVICE_URLS) | {"payment"} == set(APP_SERVICES)
    assert {name: dep["condition"] for name, dep in load["depends_on"].items()} == {
        name: "service_healthy" for name in APP_SERVICES}
