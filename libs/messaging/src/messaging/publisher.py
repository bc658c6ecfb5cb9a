"""Publishing that only counts as done when the broker says so.

The channel runs in confirm mode and raises on returns; every publish is `mandatory`
(an unroutable message is an error, not silently dropped), persistent and bounded by a
timeout. A publish returns only after the broker's ack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
)
from aiormq.exceptions import DeliveryError
from opentelemetry.context import Context
from pamqp.commands import Basic
from pamqp.common import FieldValue
from pamqp.header import ContentHeader

from messaging.observability.middleware import DEFAULT_MIDDLEWARE, Middleware, Published

PUBLISH_TIMEOUT_SECONDS = 10.0


class PublishFailed(RuntimeError):
    """The broker did not confirm a publish: nacked, returned as unroutable, or timed out."""

    def __init__(self, message: str, error_type: str = "not-confirmed"):
        super().__init__(message)
        self.error_type = error_type  # the span's error.type: nack | unroutable | timeout


def build_message(
    body: bytes,
    *,
    message_id: str,
    correlation_id: str,
    event_type: str,
    timestamp: datetime,
    headers: Mapping[str, FieldValue] | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        message_id=message_id,
        correlation_id=correlation_id,
        type=event_type,
        timestamp=timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=dict(headers or {}),
    )


class CopySource(Protocol):
    """What a copy is made of: a received message, or a dead letter kept elsewhere (the
    console's store)."""

    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def content_encoding(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime | None: ...


def copy_message(message: CopySource, headers: Mapping[str, FieldValue]) -> aio_pika.Message:
    """A persistent copy of a received message with the same body, ids, type and time,
    carrying `headers` (for a retry queue, the DLQ, or a replay)."""
    return aio_pika.Message(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=dict(headers),
    )


def encodable(message: aio_pika.Message) -> bool:
    """Whether the message's properties and headers can go on the wire at all (a header
    value AMQP has no type for cannot): a publish of it fails whatever the connection."""
    try:
        ContentHeader(0, len(message.body), message.properties).marshal()
    except Exception:
        return False
    return True


async def open_confirm_channel(connection: AbstractConnection) -> AbstractChannel:
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


async def publish_confirmed(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    *,
    timeout: float = PUBLISH_TIMEOUT_SECONDS,
    parent: Context | None = None,
    middleware: Sequence[Middleware] = DEFAULT_MIDDLEWARE,
) -> None:
    """Publish one message and wait for the broker's ack, or raise PublishFailed.

    The one place Mini EC sends a message, so the one its concerns wrap (`middleware`): by
    default a PRODUCER span `publish <exchange>` covers it and its trace context goes into
    the headers (`parent`: another context than the current one).
    """
    with contextlib.ExitStack() as around:
        published = Published(exchange.name, routing_key, message, parent)
        for concern in middleware:
            around.enter_context(concern.publishing(published))
        try:
            confirmation = await exchange.publish(
                message, routing_key=routing_key, mandatory=True, timeout=timeout
            )
        except DeliveryError as exc:  # returned as unroutable (mandatory) or nacked
            reason = getattr(exc.frame, "reply_text", None)
            if reason:
                raise PublishFailed(f"{routing_key}: {reason}", "unroutable") from exc
            raise PublishFailed(f"{routing_key}: nacked by the broker", "nack") from exc
        except TimeoutError as exc:
            raise PublishFailed(f"{routing_key}: no confirm within {timeout}s", "timeout") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishFailed(f"{routing_key}: broker answered {confirmation!r}", "nack")

