"""Tracing: one setup call per service process.

Spans go to OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
variable) is set; otherwise they are made (so trace ids reach the logs) but not exported,
and nothing complains.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from messaging import correlation

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class CorrelationIdSpanProcessor(SpanProcessor):
    """Puts the current correlation id on every span as it starts."""

    def on_start(self, span, parent_context=None) -> None:  # type: ignore[no-untyped-def]
        cid = correlation.get()
        if cid:
            span.set_attribute("correlation_id", cid)


def setup_tracing(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the tracer provider and the aio-pika instrumentation for this process."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    )
    provider.add_span_processor(CorrelationIdSpanProcessor())
    if exporter is None and any(os.environ.get(v) for v in _ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrumentor = AioPikaInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    return provider


def instrument_engine(engine, provider: TracerProvider | None = None) -> None:  # type: ignore[no-untyped-def]
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine, tracer_provider=provider or trace.get_tracer_provider()
    )
