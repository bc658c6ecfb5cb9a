"""Broker topology: the names of docs/design.md and their idempotent declaration.

A consuming service's queue name and bindings come from its spec (messaging/spec.py).

For a consuming service's queue `Q`:

    shop.events --(binding)--> Q --(delivery limit / dead-letter)--> Q.dlq
                                ^
    Q.retry.<N>s --(TTL expires, dead-letter)--'   (one wait queue per delay)

Every move between a service's own queues goes through its own direct exchange
`Q.copies`, bound to Q, each wait queue and Q.dlq with the queue's name as routing key:
the consumer's copies (retry, DLQ), the DLQ tool's replays and the broker's dead-lettering.
So no service's user needs `write` on the default exchange, which routes to any queue of
the vhost by name (another service's work queue among them).

Every queue is a durable quorum queue. The arguments here must match
`deploy/rabbitmq/definitions.json`, or the broker refuses the second declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.exceptions import ChannelNotFoundEntity

from messaging import spec

EXCHANGE = "shop.events"
# A message the consumer itself keeps crashing on is dead-lettered after this many deliveries.
DELIVERY_LIMIT = 5
DEFAULT_RETRY_DELAYS = (1, 5, 30)
# RabbitMQ 4 gives every quorum queue a delivery limit of 20 and drops a message past it
# when there is nowhere to dead-letter to. A parked message must survive being looked at
# (`dlq show` returns what it shows) any number of times, so the DLQ says so explicitly.
DLQ_DELIVERY_LIMIT = 1_000_000

_QUORUM = {"x-queue-type": "quorum"}
# at-least-once dead-lettering: the broker keeps a message until the DLQ confirmed it.
_SAFE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class QueueTopology:
    """The work queue of one service, its dead-letter queue and its retry wait queues."""

    name: str
    bindings: tuple[str, ...]
    retry_delays: tuple[int, ...] = DEFAULT_RETRY_DELAYS

    @classmethod
    def for_service(
        cls, service: str, retry_delays: tuple[int, ...] = DEFAULT_RETRY_DELAYS
    ) -> QueueTopology:
        """The queues of consuming service `service`, from its spec (ValueError if none)."""
        for consumer in spec.consumers():
            if consumer.name == service and consumer.consumes is not None:
                return cls(consumer.consumes.queue, consumer.consumes.bindings, retry_delays)
        known = ", ".join(sorted(s.name for s in spec.consumers()))
        raise ValueError(f"unknown service {service!r}; known: {known}")

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    @property
    def exchange(self) -> str:
        """The service's own direct exchange: routing key = one of its queues' names."""
        return f"{self.name}.copies"

    def retry_queue(self, delay_seconds: int) -> str:
        return f"{self.name}.retry.{delay_seconds}s"

    def queues(self) -> list[tuple[str, str]]:
        """(role, name) of every queue of this service: `work`, each `retry`, `dlq`."""
        return [
            ("work", self.name),
            *(("retry", self.retry_queue(d)) for d in self.retry_delays),
            ("dlq", self.dlq),
        ]

    def dlq_arguments(self) -> dict[str, Any]:
        return {**_QUORUM, "x-delivery-limit": DLQ_DELIVERY_LIMIT}

    def work_arguments(self) -> dict[str, Any]:
        return {
            **_QUORUM,
            **_SAFE_DEAD_LETTERING,
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": self.dlq,
        }

    def retry_arguments(self, delay_seconds: int) -> dict[str, Any]:
        return {
            **_QUORUM,
            **_SAFE_DEAD_LETTERING,
            "x-message-ttl": delay_seconds * 1000,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": self.name,
        }

    async def declare(
        self, channel: AbstractChannel, *, as_they_are: bool = False
    ) -> aio_pika.abc.AbstractQueue:
        """Declare the service's own exchange, DLQ, wait queues and the work queue bound to
        `shop.events`; returns the work queue.

        `shop.events` must exist (`ensure_exchange`): a consumer may bind to it, not own it.
        `as_they_are`: the queues exist with other arguments. Queues declared before each
        service had its own exchange dead-letter through the default one, and RabbitMQ cannot
        change a queue's arguments in place; so they are used as they are (the broker's own
        dead-lettering needs no user's permission, and our copies go through the service's
        exchange either way), and only the least-privilege step waits until they are
        re-declared (docs/failure.md#queues-from-an-earlier-version).
        """

        async def queue(name: str, arguments: dict[str, Any]) -> aio_pika.abc.AbstractQueue:
            if as_they_are:
                return await channel.declare_queue(name, passive=True)
            return await channel.declare_queue(name, durable=True, arguments=arguments)

        own = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dlq = await queue(self.dlq, self.dlq_arguments())
        await dlq.bind(own, routing_key=self.dlq)
        for delay in self.retry_delays:
            wait = await queue(self.retry_queue(delay), self.retry_arguments(delay))
            await wait.bind(own, routing_key=wait.name)
        work = await queue(self.name, self.work_arguments())
        await work.bind(own, routing_key=self.name)
        for key in self.bindings:
            await work.bind(EXCHANGE, routing_key=key)
        return work


async def declare_exchange(channel: AbstractChannel) -> AbstractExchange:
    """Declare `shop.events`: needs the configure right, which only the publisher has."""
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def ensure_exchange(connection: AbstractConnection) -> None:
    """Make sure `shop.events` exists without needing the right to configure it.

    A passive check first (what a least-privilege consumer may do); only when the exchange
    is missing, as on a fresh local broker with the guest user, is it declared.
    """
    channel = await connection.channel()
    try:
        await channel.get_exchange(EXCHANGE, ensure=True)
        return
    except ChannelNotFoundEntity:
        pass
    finally:
        await channel.close()  # a robust channel would reopen itself after the 404
    channel = await connection.channel()
    try:
        await declare_exchange(channel)
    finally:
        await channel.close()
