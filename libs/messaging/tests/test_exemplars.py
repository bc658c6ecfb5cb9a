"""The latency histograms carry the trace id of an observation as an exemplar, and `/metrics`
serves them in the OpenMetrics format when the scraper asks for it (Prometheus does).

The whole path (services exporting their spans, the exemplars naming those traces) is
tests/e2e_tracing's; here the pieces: the exemplar of the current span, the negotiation."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from messaging.chassis.http import install_common
from messaging.observability import metrics

OPENMETRICS = "application/openmetrics-text"


@pytest.mark.unit
def test_inside_a_sampled_span_the_exemplar_is_the_spans_trace_id():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        exemplar = metrics.trace_exemplar()
    assert exemplar == {"trace_id": f"{span.get_span_context().trace_id:032x}"}


@pytest.mark.unit
def test_outside_a_span_or_in_an_unsampled_one_there_is_no_exemplar():
    assert metrics.trace_exemplar() is None
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with unsampled.start_as_current_span("dropped"):
        assert metrics.trace_exemplar() is None


async def _scrape(app: FastAPI, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://svc") as client:
        return await client.get("/metrics", headers=headers)


@pytest.fixture
def observed() -> tuple[FastAPI, str, str]:
    """An app with the ops routes, and one handler observation made inside a span: (app, the
    observation's service label, its trace id)."""
    app = FastAPI()
    install_common(app, "exemplar-http", {})
    service = f"exemplar-{uuid.uuid4().hex[:8]}"
    with TracerProvider().get_tracer("test").start_as_current_span("process") as span:
        metrics.HANDLER_SECONDS.labels(service, "OrderPaid").observe(
            0.003, exemplar=metrics.trace_exemplar())
    return app, service, f"{span.get_span_context().trace_id:032x}"


@pytest.mark.unit
async def test_asked_for_openmetrics_the_histogram_bucket_shows_the_trace_id(observed):
    app, service, trace_id = observed
    # What Prometheus 3 sends: OpenMetrics first, text as the fallbacks.
    response = await _scrape(app, accept=(
        f"{OPENMETRICS};version=1.0.0;escaping=allow-utf-8;q=0.6,"
        f"{OPENMETRICS};version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(OPENMETRICS)
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(response.text)}
    with_exemplar = [s for s in families["handler_duration_seconds"].samples
                     if s.labels.get("service") == service and s.exemplar is not None]
    # One bucket holds the observation (0.0025 < 0.003 <= 0.005), with its trace id and value.
    assert [(s.labels["le"], s.exemplar.labels, s.exemplar.value) for s in with_exemplar] == [
        ("0.005", {"trace_id": trace_id}, 0.003)]


@pytest.mark.unit
async def test_without_asking_the_scraper_gets_prometheus_text_without_exemplars(observed):
    app, service, trace_id = observed
    response = await _scrape(app)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert trace_id not in response.text
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    [count] = [s for s in families["handler_duration_seconds"].samples
               if s.name == "handler_duration_seconds_count" and s.labels["service"] == service]
    assert count.value == 1


@pytest.mark.unit
@pytest.mark.parametrize("accept", [f"{OPENMETRICS}; version=abc", "text/plain; version=x.y"])
async def test_an_accept_header_the_client_library_cannot_read_gets_text_not_an_error(
    observed, accept
):
    app, _, _ = observed
    response = await _scrape(app, accept=accept)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE handler_duration_seconds histogram" in response.text
