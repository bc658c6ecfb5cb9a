"""Every metric the alert rules, the dashboard and the docs name is one the four services
expose on /metrics, and every metric they expose is documented (docs/observability.md)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import SERVICES
from devstack.wait import eventually
from messaging import spec

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mini-ec.json"
DOC = ROOT / "docs" / "observability.md"
# Made by Prometheus itself for every target, not by a service.
PROMETHEUS_OWN = {"up"}
# prometheus_client's default collectors: the runtime's, not Mini EC's.
RUNTIME_PREFIXES = ("python_", "process_")

# Backticked names in the docs that look like metrics but are settings or parameters.
NOT_METRICS = {"delay_seconds"}  # devstack.smtp_sink's slow-mail option

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def documented() -> set[str]:
    """The first column of the metric table in docs/observability.md."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M))


def named_in_prose() -> set[str]:
    """Metric-looking names in backticks anywhere in README.md and docs/*.md."""
    pattern = re.compile(r"`([a-z][a-z0-9_]*_(?:total|seconds|rows|messages|consumers|ready))"
                         r"(?:\{[^`]*\})?`")
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    names = {name for path in texts for name in pattern.findall(path.read_text(encoding="utf-8"))}
    # The console's own metrics (docs/console.md) are checked against the console by
    # apps/console/tests/test_console_e2e.py: it is not one of the services scraped here.
    return {n for n in names - NOT_METRICS if not n.startswith("console_")}


@pytest.mark.unit
def test_names_are_taken_from_selectors_not_from_functions_labels_or_keywords():
    expr = ('histogram_quantile(0.99, sum by (service, le) (rate(x_bucket{role="dlq"}[5m])))'
            ' / on (service) group_left y_total > bool 3 or vector(0) unless absent(up == 1)')
    assert metric_names(expr) == {"x_bucket", "y_total", "up"}
    assert metric_names("rate(messages_retried_total[$__rate_interval])") == {
        "messages_retried_total"}


@pytest.mark.unit
def test_rules_and_dashboard_name_something():
    assert len(rule_exprs()) >= 9 and len(dashboard_exprs()) >= 10
    assert all(metric_names(e) for e in rule_exprs() + dashboard_exprs())


@pytest.fixture(scope="module")
def exposed(stack) -> dict[str, set[str]]:
    """After one payment went through every service: {"samples": ..., "families": ...} of
    what the four services' /metrics expose (samples as PromQL selects them, families as the
    docs name them: counters with `_total`)."""
    order_id = str(uuid.uuid4())
    body = {"order_id": order_id, "customer_id": f"c-{uuid.uuid4().hex[:8]}",
            "email": "buyer@example.com", "amount": 1250, "currency": "JPY"}
    assert httpx.post(f"{stack.url('payment')}/payments", json=body, timeout=10).status_code < 300
    eventually(
        lambda: httpx.get(f"{stack.url('audit')}/events", params={"order_id": order_id},
                          timeout=10).json(),
        timeout=20, message="the payment reached audit",
    )
    samples: set[str] = set()
    families: set[str] = set()
    for service in SERVICES:
        text = httpx.get(f"{stack.url(service)}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            # `<counter>_created` (the counter's start time) parses as a family of its own.
            if family.name.startswith(RUNTIME_PREFIXES) or family.name.endswith("_created"):
                continue
            if family.type == "counter":
                families.add(f"{family.name}_total")
                samples.add(f"{family.name}_total")
            elif family.type == "histogram":
                families.add(family.name)
                samples |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
            else:
                families.add(family.name)
                samples.add(family.name)
            samples |= {sample.name for sample in family.samples}
    return {"samples": samples, "families": families}


@pytest.mark.e2e
def test_every_metric_of_the_alert_rules_is_exposed(exposed):
    used = set().union(*map(metric_names, rule_exprs()))
    assert used - exposed["samples"] - PROMETHEUS_OWN == set()


@pytest.mark.e2e
def test_every_metric_of_the_dashboard_is_exposed(exposed):
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert used - exposed["samples"] == set()


@pytest.mark.e2e
def test_the_docs_table_lists_exactly_the_exposed_metrics(exposed):
    assert documented() - exposed["families"] == set(), "documented but not exposed"
    assert exposed["families"] - documented() == set(), "exposed but not documented"


@pytest.mark.e2e
def test_every_metric_the_docs_mention_exists(exposed):
    assert named_in_prose() - exposed["samples"] - exposed["families"] == set()


@pytest.mark.e2e
def test_queue_depths_consumers_readiness_and_lag_are_measured(stack, exposed):
    # `exposed` sent a payment and waited for audit only: each service's lag is polled for.
    for service in (s.name for s in spec.consumers()):
        queue = f"{service}.events"

        def samples(service=service, queue=queue) -> dict | None:
            text = httpx.get(f"{stack.url(service)}/metrics", timeout=10).text
            values = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
            }
            # A shipped mail that came before its thank-you mail waits a moment in the retry
            # queue (out of order, docs/ordering.md): poll until the stack is at rest.
            retry = ("queue_messages", (("queue", f"{queue}.retry.1s"), ("role", "retry"),
                                         ("service", service)))
            lag = ("event_lag_seconds_count", (("event_type", "OrderPaid"), ("service", service)))
            return values if values.get(retry) == 0 and values.get(lag, 0) >= 1 else None

        values = eventually(samples, timeout=30,
                            message=f"{service} handled the payment and its retry queue is empty")

        def value(name: str, values=values, service=service, **labels: str) -> float | None:
            return values.get((name, tuple(sorted({"service": service, **labels}.items()))))

        assert value("queue_consumers", queue=queue, role="work") >= 1, service
        assert value("queue_messages", queue=f"{queue}.dlq", role="dlq") == 0, service
        assert value("queue_messages", queue=f"{queue}.retry.1s", role="retry") == 0, service
        assert value("service_ready") == 1, service
        assert value("event_lag_seconds_count", event_type="OrderPaid") >= 1, service
