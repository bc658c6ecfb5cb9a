"""The broker cancelling a consumer: said loudly, and readiness follows it.

RabbitMQ cancels a consumer when its queue is deleted (someone deletes a work queue in
the management UI, say). aio-pika then re-declares the queue and consumes again within
moments, but whatever the exchange routed meanwhile went to the other services' queues and
not to this one; the broker cannot give it back, because it was routed (others received
it). Nothing else would tell: so an error log naming the queue, the counter
`consumer_cancelled_total` (alert `MiniEcConsumerCancelled`), and `consuming()`, which
`/readyz` asks, is False until the consumer is back (docs/failure.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from messaging.observability import metrics

log = logging.getLogger(__name__)

# Readiness does not wait longer than this for the channel (it is reconnecting then).
CHANNEL_WAIT_SECONDS = 1.0


class CancelWatch:
    """Watches one consumer (by its tag, which changes when the kill switch subscribes
    anew: hence a function that tells it) on a robust channel, across reconnects."""

    def __init__(self, service: str, queue: str, channel: AbstractChannel,
                 connection: AbstractRobustConnection):
        self._service, self._queue = service, queue
        self._channel, self._connection = channel, connection
        self._tag: Callable[[], str | None] = lambda: None

    async def start(self, consumer_tag: Callable[[], str | None]) -> None:
        self._tag = consumer_tag
        await self._watch()
        # A reconnect brings a new channel underneath: watch that one too.
        self._connection.reconnect_callbacks.add(self._rewatch)

    def stop(self) -> None:
        self._connection.reconnect_callbacks.discard(self._rewatch)

    async def consuming(self) -> bool:
        """Whether the broker has our consumer on the channel right now."""
        try:
            async with asyncio.timeout(CHANNEL_WAIT_SECONDS):
                underlay = await self._channel.get_underlay_channel()
        except Exception:
            return False
        # aiormq's Channel keeps its consumers by tag; its abstract type does not say so.
        consumers = getattr(underlay, "consumers", {})
        tag = self._tag()
        return tag is not None and tag in consumers

    async def _watch(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._cancelled)

    async def _rewatch(self, *_: Any) -> None:
        await self._watch()

    def _cancelled(self, frame: Any) -> None:
        if frame.consumer_tag != self._tag():
            return
        metrics.CONSUMER_CANCELLED.labels(self._service, self._queue).inc()
        log.error("the broker cancelled our consumer of %s (was the queue deleted?): what "
                  "the exchange routed while it was gone did not reach it and is not in the "
                  "DLQ either; consuming again once the queue is declared again",
                  self._queue)
