"""The compose profile `observability`, checked without Docker: Prometheus scrapes every
service replica and RabbitMQ's plugin and loads the tested rules; Grafana gets its data source
and the dashboard; the broker nodes enable the Prometheus plugin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from messaging import spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTRACT_PORTS = {s.name: s.port for s in spec.installed()}  # from the services' specs
RABBITMQ_NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path (relative to the repository) of the bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_prometheus_and_grafana_run_only_in_the_observability_profile(compose):
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["observability"], name
    for name in CONTRACT_PORTS:
        assert "profiles" not in compose["services"][name], name


def test_prometheus_loads_the_tested_rule_file(compose):
    mounts = _mounts(compose["services"]["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "deploy/prometheus/prometheus.yml"
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    for rule_file in config["rule_files"]:
        # Relative to the configuration file, inside the container and in the repository.
        assert mounts[f"/etc/prometheus/{rule_file}"] == f"deploy/prometheus/{rule_file}"
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    tests = _yaml(DEPLOY / "prometheus" / "alerts_test.yml")
    assert tests["rule_files"] == config["rule_files"]


def test_prometheus_scrapes_every_replica_of_every_service_and_the_broker():
    jobs = {job["job_name"]: job for job in _yaml(DEPLOY / "prometheus" / "prometheus.yml")[
        "scrape_configs"]}
    for service, port in CONTRACT_PORTS.items():
        # DNS discovery: one target per container of `--scale`, not one round-robin name.
        (sd,) = jobs[service]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([service], "A", port), service
        assert jobs[service].get("metrics_path", "/metrics") == "/metrics"
    broker_targets = {
        target
        for name in ("rabbitmq", "rabbitmq-queues")
        for config in jobs[name]["static_configs"]
        for target in config["targets"]
    }
    assert broker_targets == {"rabbitmq:15692"}


def test_every_broker_node_enables_the_prometheus_plugin(compose):
    plugins_file = DEPLOY / "rabbitmq" / "enabled_plugins"
    plugins = re.findall(r"[a-z_]+", plugins_file.read_text(encoding="utf-8"))
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(plugins)
    assert plugins_file.read_text(encoding="utf-8").rstrip().endswith("].")
    for node in RABBITMQ_NODES:
        mounts = _mounts(compose["services"][node])
        assert mounts["/etc/rabbitmq/enabled_plugins"] == "deploy/rabbitmq/enabled_plugins", node


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    sources = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    (datasource,) = [d for d in sources if d["type"] == "prometheus"]
    assert datasource["url"] == "http://prometheus:9090"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    (provider,) = _yaml(provisioning / "dashboards" / "mini-ec.yml")["providers"]
    dashboards = ROOT / mounts[provider["options"]["path"]]
    files = sorted(dashboards.glob("*.json"))
    assert [f.name for f in files] == ["mini-ec.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/mini-ec.json"
    dashboard = json.loads(files[0].read_text(encoding="utf-8"))
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "mini-ec.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needle in ("messages_acked_total", "outbox_oldest_pending_age_seconds",
                   "messages_retried_total", "messages_dead_lettered_total",
                   "histogram_quantile(0.5, sum by (service, le) (rate(handler_duration",
                   "histogram_quantile(0.99, sum by (service, le) (rate(handler_duration",
                   "queue_messages", "event_lag_seconds_bucket"):
        assert needle in exprs, needle


def _datasources() -> dict[str, dict]:
    path = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    return {d["type"]: d for d in _yaml(path)["datasources"]}


def test_prometheus_keeps_exemplars(compose):
    command = compose["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command


def test_an_exemplars_trace_id_links_to_the_trace_in_jaeger(compose):
    sources = _datasources()
    jaeger = sources["jaeger"]
    # Grafana's server reaches Jaeger's query API by its compose name and UI port.
    assert jaeger["url"] == "http://jaeger:16686" and "jaeger" in compose["services"]
    (link,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    # The exemplar label the services write (messaging.observability.metrics.trace_exemplar).
    assert link == {"name": "trace_id", "datasourceUid": jaeger["uid"]}


def test_the_latency_panels_show_exemplars():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "mini-ec.json").read_text())
    with_exemplars = {
        histogram for panel in dashboard["panels"] for target in panel["targets"]
        if target.get("exemplar") is True
        for histogram in re.findall(r"(\w+_seconds)_bucket", target["expr"])}
    assert with_exemplars == {"http_request_duration_seconds", "handler_duration_seconds",
                              "event_lag_seconds", "outbox_publish_lag_seconds"}
