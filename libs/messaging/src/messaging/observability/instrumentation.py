"""The project's own AMQP spans, by the OpenTelemetry messaging conventions for RabbitMQ.

Every message Mini EC sends goes through `publisher.publish_confirmed`, every delivery it
handles through `EventConsumer` and its tracing middleware (observability/middleware.py);
those two are instrumented here, so no library instrumentation is needed (aio-pika's emits
the pre-1.26 names and attributes):

    publish <exchange>   PRODUCER  messaging.operation.type=send, .name=publish
    process <queue>      CONSUMER  messaging.operation.type=process, .name=process

A service's own exchange (`<queue>.copies`: retry queues, DLQ, replays) routes by the queue's
name, which is in `messaging.rabbitmq.destination.routing_key`; the default exchange, if a
message ever came through it, is named `amq.default`. A failure sets the span's
status to ERROR and `error.type`: for a delivery, the class the consumer gave it
(`transient`, `poison`, `permanent`, `exhausted`, `out-of-order`); for a publish, why it was
not confirmed (`nack`, `unroutable`, `timeout`). Project attributes are namespaced
`mini_ec.*`; `mini_ec.correlation_id` is on every span (Jaeger: tag search).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from messaging.observability import telemetry

SYSTEM = "rabbitmq"
DEFAULT_EXCHANGE = "amq.default"
ERROR_TYPE = "error.type"
_tracer = trace.get_tracer("messaging")


class _HeaderGetter(Getter[Mapping[str, object]]):
    """AMQP header values may arrive as bytes."""

    def get(self, carrier: Mapping[str, object], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode() if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, object]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def destination(exchange: str) -> str:
    return exchange or DEFAULT_EXCHANGE


class _WithHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, Any] | None: ...


def trace_context(message: _WithHeaders) -> Context:
    """The context the message was published in (its `traceparent` header); none when the
    header cannot be read (the consumer then judges the message on its own)."""
    try:
        return propagate.extract(message.headers or {}, getter=_GETTER)
    except Exception:
        return Context()


def _present(attributes: dict[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    """Attributes without the unset ones (a message without an id, say)."""
    return {k: v for k, v in attributes.items() if v is not None and v != ""}


@contextlib.contextmanager
def publishing(
    exchange: str, routing_key: str, message: aio_pika.Message, parent: Context | None = None
) -> Iterator[Span]:
    """A PRODUCER span around one publish, its context written into the message's headers.

    `parent` defaults to the current context (the request, the relay, the delivery being
    handled); a replay passes the context of the message it replays.
    """
    if not is_instrumentation_enabled():
        yield trace.INVALID_SPAN
        return
    name = destination(exchange)
    attributes = _present({
        "messaging.system": SYSTEM,
        "messaging.destination.name": name,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": message.message_id,
        "messaging.message.conversation_id": message.correlation_id,
        "messaging.message.body.size": len(message.body),
        telemetry.ATTRIBUTE: message.correlation_id,
        telemetry.EVENT_TYPE: message.type,
    })
    with _tracer.start_as_current_span(
        f"publish {name}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        headers = dict(message.headers or {})
        propagate.inject(headers)  # replaces the traceparent a copied message carried
        message.headers = headers
        try:
            yield span
        except BaseException as exc:
            failed(span, getattr(exc, "error_type", None) or type(exc).__name__, exc)
            raise


@contextlib.contextmanager
def processing(queue: str, message: AbstractIncomingMessage) -> Iterator[Span]:
    """A CONSUMER span around the handling of one delivery, from receipt to ack, a child of
    the publish that sent it. An exception escaping it (the broker link failed while
    settling) marks it failed with the exception's class, unless a class was already set."""
    attributes = _present({
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.rabbitmq.destination.routing_key": message.routing_key,
        "messaging.rabbitmq.message.delivery_tag": message.delivery_tag,
        "messaging.message.id": message.message_id,
        "messaging.message.conversation_id": message.correlation_id,
        "messaging.message.body.size": len(message.body),
        # Where it was published to: shop.events, or <queue>.copies for a retry or a replay.
        telemetry.EXCHANGE: destination(message.exchange or ""),
    })
    with _tracer.start_as_current_span(
        f"process {queue}", context=trace_context(message), kind=SpanKind.CONSUMER,
        attributes=attributes, record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            if not _has_failed(span):
                failed(span, type(exc).__name__, exc)
            raise


def failed(span: Span, error_type: str, exc: BaseException | None = None) -> None:
    """Status ERROR with `error.type` (and the exception as an event, when there is one)."""
    if isinstance(span, NonRecordingSpan) or not span.is_recording():
        return
    span.set_attribute(ERROR_TYPE, error_type)
    if exc is not None:
        span.record_exception(exc)
    description = f"{error_type}: {type(exc).__name__}: {exc}" if exc else error_type
    span.set_status(StatusCode.ERROR, description[:500])


def _has_failed(span: Span) -> bool:
    attributes = getattr(span, "attributes", None) or {}
    return ERROR_TYPE in attributes


def set_event(span: Span, *, order_id: object, event_id: object, event_type: str) -> None:
    """What the delivery turned out to be, once its body parsed."""
    span.set_attribute(telemetry.ORDER_ID, str(order_id))
    span.set_attribute(telemetry.EVENT_ID, str(event_id))
    span.set_attribute(telemetry.EVENT_TYPE, event_type)
