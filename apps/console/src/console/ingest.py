"""Taking every consuming service's DLQ into the console's store.

Each message is acked only after the transaction that stored it committed: a crash in
between redelivers it, and storing it again changes nothing (one row per queue and event id).
The DLQs stay empty while the console runs, so looking at a dead letter never touches the
broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity

from console import fingerprint, metrics, store
from messaging import headers as h
from messaging.chassis.runtime import BrokerLink

log = logging.getLogger("console.ingest")
MISSING_QUEUE_RETRY_SECONDS = 2.0
STORE_RETRY_SECONDS = 1.0


def json_safe(value: Any) -> Any:
    """AMQP header values (bytes, datetimes in x-death, nested tables) as JSON values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _text(headers: Mapping[str, Any], name: str) -> str:
    value = headers.get(name)
    return "" if value is None else str(value)[: h.MAX_TEXT]


def _failed_at(headers: Mapping[str, Any]) -> datetime:
    """When it failed: our `error-at`, else the broker's dead-lettering time, else now."""
    with contextlib.suppress(ValueError, TypeError):
        at = datetime.fromisoformat(_text(headers, h.ERROR_AT))
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        with contextlib.suppress(ValueError, TypeError):
            at = datetime.fromisoformat(str(deaths[0].get("time")))
            return at if at.tzinfo else at.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _order_id(body: bytes) -> str | None:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = raw.get("order_id") if isinstance(raw, dict) else None
    return str(value)[:128] if isinstance(value, str | int) else None


def incoming(service: str, queue: str, message: AbstractIncomingMessage) -> store.Incoming:
    """What the store keeps of one DLQ message. A message the broker dead-lettered itself
    (the consumer kept crashing on it) has no error headers: its class is `delivery-limit`."""
    headers: dict[str, Any] = json_safe(dict(message.headers or {}))
    error_class = _text(headers, h.ERROR_CLASS) or "delivery-limit"
    error_type = _text(headers, h.ERROR_TYPE) or "-"
    error_message = _text(headers, h.ERROR_MESSAGE)
    event_type = (message.type or "")[:64] or "-"
    # A poison message may carry no id: its body's hash stands in, so a redelivery is the
    # same row.
    event_id = (message.message_id or "")[:128] or (
        "sha256:" + hashlib.sha256(message.body).hexdigest()[:32])
    published = message.timestamp
    if published is not None and published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    traceparent = headers.get("traceparent")
    return store.Incoming(
        service=service, queue=_text(headers, h.ERROR_QUEUE) or queue.removesuffix(".dlq"),
        event_id=event_id, event_type=event_type, order_id=_order_id(message.body),
        correlation_id=(message.correlation_id or None),
        traceparent=str(traceparent)[:128] if traceparent else None,
        error_class=error_class[:32], error_type=error_type[:128], error_message=error_message,
        fingerprint=fingerprint.fingerprint(service, error_class, error_type, event_type,
                                            error_message),
        title=fingerprint.title(service, error_class, error_type, event_type, error_message),
        headers=headers, body=message.body, content_type=message.content_type,
        content_encoding=message.content_encoding, published_at=published,
        failed_at=_failed_at(headers),
    )


class Ingest:
    """Consumes `dlqs` ({dlq name: service}) and stores what comes, a batch per commit."""

    def __init__(self, sessions: store.Sessions, broker: BrokerLink, dlqs: Mapping[str, str],
                 batch: int = 200):
        self._sessions, self._broker, self._dlqs, self._batch = sessions, broker, dlqs, batch
        self._inbox: asyncio.Queue[tuple[str, str, AbstractIncomingMessage]] = asyncio.Queue()
        self._consuming: set[str] = set()

    @property
    def missing(self) -> list[str]:
        """DLQs not consumed (yet): not declared, since their service never ran here."""
        return sorted(set(self._dlqs) - self._consuming)

    async def run(self) -> None:
        await asyncio.gather(self._subscribe(), self._store_loop())

    async def _subscribe(self) -> None:
        connection = await self._broker.connection()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._batch * 2)
        while self.missing:
            for dlq in self.missing:
                if not await _exists(connection, dlq):
                    continue
                queue = await channel.get_queue(dlq, ensure=False)
                service = self._dlqs[dlq]

                async def take(message: AbstractIncomingMessage, service: str = service,
                               dlq: str = dlq) -> None:
                    await self._inbox.put((service, dlq, message))

                await queue.consume(take)
                self._consuming.add(dlq)
                log.info("taking dead letters from %s", dlq)
            if self.missing:
                await asyncio.sleep(MISSING_QUEUE_RETRY_SECONDS)

    async def _store_loop(self) -> None:
        while True:
            taken = [await self._inbox.get()]
            while len(taken) < self._batch and not self._inbox.empty():
                taken.append(self._inbox.get_nowait())
            await self._store(taken)

    async def _store(self, taken: list[tuple[str, str, AbstractIncomingMessage]]) -> None:
        records = [incoming(service, dlq, message) for service, dlq, message in taken]
        while True:
            try:
                await store.park(self._sessions, records)
                break
            except Exception:  # the database is away: keep the messages, try again
                log.exception("storing %d dead letters failed; trying again", len(records))
                await asyncio.sleep(STORE_RETRY_SECONDS)
        for (service, _dlq, message), record in zip(taken, records, strict=True):
            with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
                # A lost channel redelivers it; storing it again is a no-op.
                await message.ack()
            metrics.PARKED_TOTAL.labels(service, record.error_class).inc()


async def _exists(connection: AbstractRobustConnection, queue: str) -> bool:
    """Whether `queue` is declared. A passive declaration of a missing queue closes its
    channel, hence a channel of its own (the consuming one must stay open)."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        return False
    await channel.close()
    return True
