"""The compose cluster mode, checked without Docker: HAProxy (pinned, health-checked) in front
of the three RabbitMQ nodes and of payment's replicas, payment scalable behind one address
(`cluster.env` over `.env`), and the stack without cluster.env as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from messaging import spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_ENV = ROOT / "cluster.env"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
APP_SERVICES = spec.names()
PAYMENT_PORT = str(spec.named("payment").port)


def sections(text: str) -> dict[str, list[str]]:
    """haproxy.cfg as {"backend rabbitmq": [its lines, stripped]}, comments dropped."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        body = line.split("#", 1)[0].rstrip()
        if not body:
            continue
        if not body[0].isspace():
            current = found.setdefault(body, [])
        elif current is not None:
            current.append(" ".join(body.split()))
    return found


@pytest.fixture(scope="module")
def cfg() -> dict[str, list[str]]:
    return sections(HAPROXY_CFG.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cluster(compose_tools, env_file) -> dict:
    return compose_tools.load_compose({**env_file, **compose_tools.read_env_file(CLUSTER_ENV)})


def _host_port(port: str) -> str:
    _, host, _ = str(port).split(":")
    return host


def test_cluster_env_only_switches_what_env_sets(compose_tools, env_file):
    switched = compose_tools.read_env_file(CLUSTER_ENV)
    assert set(switched) <= set(env_file)
    assert switched["RABBITMQ_HOST"] == "haproxy"
    assert switched["HAPROXY_PAYMENT_HOST_PORT"] == "8000"


def test_haproxy_is_in_the_cluster_profile_on_a_pinned_docker_hub_image(compose):
    haproxy = compose["services"]["haproxy"]
    assert haproxy["profiles"] == ["cluster"]
    # The official image by its short name, pinned to a patch release (no registry host).
    assert re.fullmatch(r"haproxy:\d+\.\d+\.\d+", haproxy["image"]), haproxy["image"]
    mount = "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert mount in haproxy["volumes"]
    assert haproxy["environment"]["PAYMENT_PORT"] == PAYMENT_PORT  # the config's "${PAYMENT_PORT}"


def test_haproxy_is_healthy_only_while_a_broker_node_is_up(compose, cfg):
    check = compose["services"]["haproxy"]["healthcheck"]
    command = " ".join(check["test"])
    assert check["test"][0] == "CMD"
    assert "/dev/tcp/127.0.0.1/8404" in command and "GET /healthz" in command
    assert "grep -q ' 200 '" in command
    health = cfg["frontend health"]
    assert {"bind :8404", "monitor-uri /healthz",
            "monitor fail if { nbsrv(rabbitmq) lt 1 }"} <= set(health)


def test_haproxy_balances_amqp_over_every_rabbitmq_node_with_health_checks(compose, cfg):
    nodes = {name for name, s in compose["services"].items()
             if s.get("image", "").startswith("rabbitmq:")}
    assert nodes == {"rabbitmq", "rabbitmq-2", "rabbitmq-3"}
    assert {"mode tcp", "bind :5672", "default_backend rabbitmq"} <= set(cfg["frontend amqp"])
    backend = cfg["backend rabbitmq"]
    assert "mode tcp" in backend
    servers = {line.split()[1]: line.split()[2] for line in backend if line.startswith("server ")}
    assert servers == {node: f"{node}:5672" for node in nodes}
    defaults = next(line.split() for line in backend if line.startswith("default-server "))
    # Health-checked; a node marked down has its sessions cut so clients reconnect elsewhere;
    # names resolved at run time (a node may not exist yet when HAProxy starts).
    assert {"check", "shutdown-sessions", "resolvers"} <= set(defaults)
    assert defaults[defaults.index("on-marked-down") + 1] == "shutdown-sessions"
    assert cfg["resolvers docker"][0] == "nameserver dns 127.0.0.11:53"  # Docker's DNS


def test_haproxy_spreads_payment_over_every_replica_checked_by_healthz(cfg):
    assert 'bind :"${PAYMENT_PORT}"' in cfg["frontend payment"]
    backend = cfg["backend payment"]
    assert {"mode http", "option httpchk GET /healthz"} <= set(backend)
    template = next(line.split() for line in backend if line.startswith("server-template "))
    assert int(template[2]) >= 2  # room for `--scale payment=N`
    assert template[3] == 'payment:"${PAYMENT_PORT}"'
    assert {"check", "resolvers", "init-addr"} <= set(template)
    retry = next(line.split() for line in backend if line.startswith("retry-on "))
    assert "conn-failure" in retry  # a POST that met a dead replica goes to another


def test_alone_the_services_use_the_node_and_payment_keeps_its_fixed_port(compose):
    for name in APP_SERVICES:
        url = compose["services"][name]["environment"]["RABBITMQ_URL"]
        assert url.endswith("@rabbitmq:5672/shop"), name
    assert compose["services"]["payment"]["ports"] == [f"127.0.0.1:8000:{PAYMENT_PORT}"]
    # With the profile but without cluster.env, HAProxy takes a free port: no clash on 8000.
    assert [_host_port(p) for p in compose["services"]["haproxy"]["ports"]] == [""]


def test_in_cluster_mode_every_service_reaches_rabbitmq_through_haproxy(cluster):
    for name in APP_SERVICES:
        url = cluster["services"][name]["environment"]["RABBITMQ_URL"]
        assert url.endswith("@haproxy:5672/shop"), name


def test_in_cluster_mode_payment_scales_behind_haproxy_on_one_address(cluster):
    payment = cluster["services"]["payment"]
    assert "container_name" not in payment and "hostname" not in payment
    (port,) = payment["ports"]
    first, sep, last = _host_port(port).partition("-")
    assert sep and int(last) - int(first) >= 2, f"{port} is not a port range"
    assert cluster["services"]["haproxy"]["ports"] == [f"127.0.0.1:8000:{PAYMENT_PORT}"]
    assert not int(first) <= 8000 <= int(last)


@pytest.mark.parametrize("mode", ["alone", "cluster"])
def test_no_two_services_publish_the_same_host_port(compose, cluster, mode):
    services = (compose if mode == "alone" else cluster)["services"]
    taken: dict[int, str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host = _host_port(port)
            if not host:
                continue
            first, _, last = host.partition("-")
            for number in range(int(first), int(last or first) + 1):
                assert number not in taken, f"{name} and {taken[number]} both publish {number}"
                taken[number] = name


HAPROXY = shutil.which("haproxy")
NO_HAPROXY = ("haproxy is not installed (apt-get install haproxy): "
              "deploy/haproxy/haproxy.cfg not checked by `haproxy -c`")


def _haproxy_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True,
                          env={**os.environ, "PAYMENT_PORT": PAYMENT_PORT}, timeout=30)


@pytest.mark.skipif(HAPROXY is None, reason=NO_HAPROXY)
def test_haproxy_accepts_the_config():
    result = _haproxy_check(HAPROXY_CFG)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(HAPROXY is None, reason=NO_HAPROXY)
def test_haproxy_check_refuses_a_broken_config(tmp_path):
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY_CFG.read_text().replace("balance leastconn", "balance nowhere"))
    assert _haproxy_check(broken).returncode != 0
