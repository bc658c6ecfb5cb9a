"""Tracing setup, the correlation id on spans, JSON log lines, and the correlation middleware.

Whatever installs process-wide state (the tracer provider, the root log handler) runs in a
child process, so these tests leave the test process as they found it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from devstack.stack import free_port
from devstack.wait import eventually
from messaging.chassis.http import install_common
from messaging.observability import correlation
from messaging.observability.telemetry import ATTRIBUTE, CorrelationIdSpanProcessor


def local_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """A provider of our own (not the global one) with the correlation processor."""
    provider = TracerProvider()
    provider.add_span_processor(CorrelationIdSpanProcessor())
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


@pytest.mark.unit
def test_a_span_started_while_a_correlation_id_is_current_carries_it():
    tracer, exporter = local_tracer()
    token = correlation.current.set("order-42")
    try:
        with tracer.start_as_current_span("work"):
            pass
    finally:
        correlation.current.reset(token)

    [span] = exporter.get_finished_spans()
    assert span.attributes[ATTRIBUTE] == "order-42"


@pytest.mark.unit
def test_a_span_inherits_the_correlation_id_of_its_parent_when_none_is_current():
    tracer, exporter = local_tracer()
    with tracer.start_as_current_span("request") as parent:
        parent.set_attribute(ATTRIBUTE, "set-on-the-parent")
        with tracer.start_as_current_span("child"), tracer.start_as_current_span("grandchild"):
            pass

    assert {s.name: s.attributes.get(ATTRIBUTE) for s in exporter.get_finished_spans()} == {
        "grandchild": "set-on-the-parent", "child": "set-on-the-parent",
        "request": "set-on-the-parent"}


@pytest.mark.unit
def test_a_span_with_no_correlation_anywhere_gets_no_attribute():
    tracer, exporter = local_tracer()
    with tracer.start_as_current_span("housekeeping"):
        pass

    [span] = exporter.get_finished_spans()
    assert ATTRIBUTE not in span.attributes


def run_child(code: str, env: dict[str, str] | None = None, timeout: float = 60):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.unit
def test_without_an_otlp_endpoint_a_trace_started_here_has_ids_but_is_not_recorded():
    result = run_child("""
        import sys, threading
        from opentelemetry import trace
        from messaging.observability.telemetry import setup_tracing
        setup_tracing("quiet")
        with trace.get_tracer("t").start_as_current_span("s") as span:
            assert span.get_span_context().is_valid  # trace ids still reach the logs
            print(span.is_recording(), span.get_span_context().trace_flags.sampled)
        # No exporter: no OTLP exporter loaded, no export thread started.
        print("opentelemetry.exporter.otlp.proto.http.trace_exporter" in sys.modules,
              threading.active_count())
    """)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False False", "False 1"]
    assert result.stderr == ""


@pytest.mark.unit
def test_without_an_otlp_endpoint_a_span_whose_parent_was_recorded_is_recorded():
    result = run_child("""
        from opentelemetry import propagate, trace
        from messaging.observability import correlation
        from messaging.observability.telemetry import ATTRIBUTE, setup_tracing
        setup_tracing("quiet")
        correlation.current.set("c-quiet")
        parent = propagate.extract(
            {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        with trace.get_tracer("t").start_as_current_span("s", context=parent) as span:
            print(span.is_recording(), format(span.get_span_context().trace_id, "032x"))
        print(span.attributes.get(ATTRIBUTE))  # the correlation id is put on every span
    """)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["True 0af7651916cd43dd8448eb211c80319c", "c-quiet"]


@pytest.mark.unit
def test_once_spans_are_exported_a_trace_started_here_is_recorded():
    result = run_child("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from messaging.observability.telemetry import export_to, setup_tracing
        setup_tracing("quiet")
        exporter = InMemorySpanExporter()
        export_to(SimpleSpanProcessor(exporter))
        with trace.get_tracer("t").start_as_current_span("s"):
            pass
        print([span.name for span in exporter.get_finished_spans()])
    """)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "['s']"


@pytest.mark.unit
def test_a_configured_sampler_is_the_sdk_s_own():
    result = run_child("""
        from opentelemetry import trace
        from messaging.observability.telemetry import setup_tracing
        setup_tracing("quiet")
        with trace.get_tracer("t").start_as_current_span("s") as span:
            print(span.is_recording())
    """, env={"OTEL_TRACES_SAMPLER": "always_on"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "True"


@pytest.mark.unit
def test_log_lines_are_json_with_trace_span_and_correlation_ids_for_ours_uvicorns_and_warnings():
    result = run_child("""
        import logging, warnings
        from opentelemetry import trace
        from messaging.observability import correlation
        from messaging.chassis.logs import setup_logging
        from messaging.observability.telemetry import setup_tracing
        setup_logging("svc", json_lines=True)
        setup_tracing("svc")
        correlation.current.set("cid-1")
        with trace.get_tracer("t").start_as_current_span("s") as span:
            ctx = span.get_span_context()
            print(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
            logging.getLogger("messaging.consumer").info("applied %s", "OrderPaid")
            logging.getLogger("uvicorn.error").info("Started server process")
            warnings.warn("deprecated thing")
            try:
                1 / 0
            except ZeroDivisionError:
                logging.getLogger("x").exception("it broke")
    """)

    assert result.returncode == 0, result.stderr
    trace_id, span_id = result.stdout.split()
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["logger"] for line in lines] == ["messaging.consumer", "uvicorn.error",
                                                  "py.warnings", "x"]
    for line in lines:
        assert line["service"] == "svc" and line["correlation_id"] == "cid-1"
        assert (line["trace_id"], line["span_id"]) == (trace_id, span_id)
        assert line["time"].endswith("+00:00") and line["level"] in ("INFO", "WARNING", "ERROR")
    assert lines[0]["message"] == "applied OrderPaid"
    assert "ZeroDivisionError" in lines[3]["exception"]


class SpanCounter:
    """A bare OTLP/HTTP endpoint that remembers the names of the spans it receives."""

    def __init__(self) -> None:
        self.names: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                request = ExportTraceServiceRequest.FromString(
                    self.rfile.read(int(self.headers["Content-Length"])))
                outer.names += [s.name for r in request.resource_spans
                                for ss in r.scope_spans for s in ss.spans]
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.integration
def test_sigterm_exports_the_last_spans_before_the_process_ends():
    receiver = SpanCounter()
    port = free_port()
    # A batch delay far beyond the test: only the flush at shutdown can deliver the span.
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            from contextlib import asynccontextmanager
            from fastapi import FastAPI
            from opentelemetry import trace
            from messaging.chassis.server import serve
            from messaging.chassis.settings import ServiceSettings
            from messaging.observability.telemetry import setup_tracing
            setup_tracing("flush")

            @asynccontextmanager
            async def lifespan(app):
                yield
                trace.get_tracer("t").start_span("last words").end()

            app = FastAPI(lifespan=lifespan)

            @app.get("/healthz")
            async def healthz():
                return {{}}

            serve(app, ServiceSettings(port={port}))
        """)],
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
             "OTEL_BSP_SCHEDULE_DELAY": "600000"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return child.poll() is not None  # stop waiting if it died

        eventually(up, timeout=30, message="child serving")
        child.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully; serve() then lets the process end with exit 0.
        assert child.wait(30) == 0, child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
        receiver.server.shutdown()

    assert "last words" in receiver.names


@pytest.fixture
async def client():
    app = FastAPI()
    install_common(app, "cid-test", {})

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        yield c


@pytest.mark.unit
@pytest.mark.parametrize("path", ["/healthz", "/no-such-route", "/boom"])
async def test_a_valid_correlation_id_is_echoed_on_every_response(client, path):
    response = await client.get(path, headers={"X-Correlation-ID": "abc-123"})

    assert response.headers["X-Correlation-ID"] == "abc-123"


@pytest.mark.unit
@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "semi;colon"])
async def test_a_missing_or_bad_correlation_id_is_replaced_by_a_new_uuid(client, sent):
    headers = {"X-Correlation-ID": sent} if sent is not None else {}
    response = await client.get("/healthz", headers=headers)

    minted = response.headers["X-Correlation-ID"]
    assert minted != sent and len(minted) == 36 and minted.count("-") == 4


@pytest.mark.unit
async def test_an_unhandled_error_is_a_500_that_still_carries_the_id_logged_with_it(
    client, caplog
):
    response = await client.get("/boom", headers={"X-Correlation-ID": "boom-1"})

    assert (response.status_code, response.headers["X-Correlation-ID"]) == (500, "boom-1")
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "unhandled error in GET /boom" in record.getMessage() and record.exc_info
    assert REGISTRY.get_sample_value("http_requests_total", {
        "service": "cid-test", "method": "GET", "route": "/boom", "status": "500"}) >= 1


@pytest.mark.unit
def test_a_trace_header_that_cannot_be_read_gives_no_context_instead_of_raising():
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from messaging.observability.telemetry import TolerantPropagator

    with pytest.raises(TypeError):
        TraceContextTextMapPropagator().extract({"traceparent": 42})
    context = TolerantPropagator(TraceContextTextMapPropagator()).extract({"traceparent": 42})
    assert not trace.get_current_span(context).get_span_context().is_valid
