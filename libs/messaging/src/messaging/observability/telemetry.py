"""Tracing: one setup call per service process.

Spans go to OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
variable) is set. Otherwise nothing is exported and nothing complains: a trace that starts
here is not recorded (its ids are still made, so they reach the logs and the next hop), and
a span whose parent was recorded elsewhere is, so a trace begun where spans are exported
stays whole (`RecordedWhenRead`).

Every span carries the `mini_ec.correlation_id` attribute, so Jaeger's tag search finds all
the spans of one order in every service. AMQP spans are the project's own
(messaging/observability/instrumentation.py), by the OpenTelemetry messaging conventions.

Housekeeping that belongs to no request or message (the relay's polling, readiness probes,
inbox trimming) runs `untraced()`: it would otherwise flood the backend with one root trace
per poll, none of them with a correlation id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from messaging.observability import correlation

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Project attributes, namespaced so they cannot collide with the conventions' own.
ATTRIBUTE = "mini_ec.correlation_id"
ORDER_ID = "mini_ec.order_id"
EVENT_ID = "mini_ec.event_id"
EVENT_TYPE = "mini_ec.event_type"
OUTBOX_ID = "mini_ec.outbox.id"
EXCHANGE = "mini_ec.exchange"
HANDLER = "mini_ec.handler"


class CorrelationIdSpanProcessor(SpanProcessor):
    """Puts the correlation id on every span as it starts.

    From the current work's context variable; failing that, from the local parent span, which
    covers spans started where the variable is not set (e.g. the HTTP server span's children
    made by the ASGI layer outside our middleware).
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        cid: object = correlation.get()
        if not cid:
            parent = trace.get_current_span(parent_context)
            if isinstance(parent, ReadableSpan) and parent.attributes:
                cid = parent.attributes.get(ATTRIBUTE)
        if cid:
            span.set_attribute(ATTRIBUTE, str(cid))


class TolerantPropagator(TextMapPropagator):
    """The configured propagators, without their crash on a carrier they cannot read.

    The consumer extracts the trace context from a message's headers before it looks at the
    message (messaging/observability/instrumentation.py); a header such as `traceparent: 42`
    must not make it raise there, or the delivery would never be settled. A context that
    cannot be read is no context: the message reaches the consumer, which dead-letters it as poison
    (messaging/headers.py).
    """

    def __init__(self, inner: TextMapPropagator):
        self.inner = inner

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        try:
            return self.inner.extract(carrier, context, getter=getter)
        except Exception:
            return context if context is not None else Context()

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        self.inner.inject(carrier, context, setter=setter)

    @property
    def fields(self) -> set[str]:
        return self.inner.fields


def setup_tracing(service: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install the tracer provider for this process."""
    if exporter is None and any(os.environ.get(v) for v in _ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}),
        sampler=_sampler(exporting=exporter is not None),
    )
    provider.add_span_processor(CorrelationIdSpanProcessor())
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if not isinstance(propagate.get_global_textmap(), TolerantPropagator):
        propagate.set_global_textmap(TolerantPropagator(propagate.get_global_textmap()))
    return provider


def _sampler(*, exporting: bool) -> Sampler | None:
    """None: the SDK's own (`OTEL_TRACES_SAMPLER` when set, else every span recorded)."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return RecordedWhenRead(read=exporting)


class RecordedWhenRead(Sampler):
    """Why: with no exporter, no one reads a span's attributes and timings, yet recording
    them was about a tenth of a consumer's CPU per message (docs/performance.md). Until
    something reads them (an exporter: `setup_tracing`, `export_to`), a trace that starts
    here is not recorded: its span still has ids (log lines, the traceparent passed on) but
    collects nothing. A span whose parent was recorded (a request or a message from a
    process that exports) is recorded, so that trace stays whole."""

    def __init__(self, *, read: bool):
        self.read = read
        self._recorded = ParentBased(ALWAYS_ON)
        self._unless_parent = ParentBased(ALWAYS_OFF)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        sampler = self._recorded if self.read else self._unless_parent
        return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links,
                                     trace_state)

    def get_description(self) -> str:
        return f"RecordedWhenRead{{read={self.read}}}"


def export_to(processor: SpanProcessor) -> None:
    """Send this process's spans to `processor` too (an exporter's), and record them from
    now on (`RecordedWhenRead`)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        raise RuntimeError("setup_tracing has not run in this process")
    provider.add_span_processor(processor)
    if isinstance(provider.sampler, RecordedWhenRead):
        provider.sampler.read = True


def shutdown_tracing(timeout_seconds: float = 5.0) -> None:
    """Export what is still buffered (bounded: a dead collector must not hold up the exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(int(timeout_seconds * 1000))
        provider.shutdown()


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No spans from instrumented libraries (SQL, AMQP) inside this block."""
    with suppress_instrumentation():
        yield


_traced_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


# `instrument_engine` builds EngineTracer from a module the SQLAlchemy instrumentation does not
# document (opentelemetry.instrumentation.sqlalchemy.engine), read from these releases; on
# any other the extra engine is left untraced (logged), and
# libs/messaging/tests/test_telemetry_contract.py fails until someone re-reads that module.
ENGINE_TRACER_WRITTEN_FOR = ("0.66b",)


def instrument_engine(engine: AsyncEngine, provider: trace.TracerProvider | None = None) -> None:
    """Trace the statements of this engine (an AsyncEngine), on every synchronous engine
    they run on (`db.sync_engines`: its own, and a SQLite file's inline one).

    The instrumentor is a process-wide switch: its `instrument(engine=...)` is ignored after
    the first call, so any further engine (another app in the same process, a test) gets its
    own tracer here.
    """
    from messaging.chassis import db

    for sync_engine in db.sync_engines(engine):
        _instrument(sync_engine, provider or trace.get_tracer_provider())


def _instrument(sync_engine: Engine, provider: trace.TracerProvider) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import get_meter

    if sync_engine in _traced_engines:
        return
    _traced_engines.add(sync_engine)
    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(engine=sync_engine, tracer_provider=provider)
        return
    if not str(__version__).startswith(ENGINE_TRACER_WRITTEN_FOR):
        log.warning("opentelemetry-instrumentation-sqlalchemy %s: not a release this was "
                    "written for (%s); the statements of this engine are not traced",
                    __version__, ", ".join(f"{v}x" for v in ENGINE_TRACER_WRITTEN_FOR))
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    tracer = trace.get_tracer(SQLAlchemyInstrumentor.__module__, __version__, provider)
    usage = get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer, sync_engine, usage)  # type: ignore[no-untyped-call]  # untyped upstream
