"""An in-memory stand-in for the few broker operations EventConsumer uses, with a fake clock.

Only for unit tests of the consumer's decisions: the consumer runs its own code unchanged
(start, `_on_message`, its copies to the retry queues and the DLQ, acks), while queues
live in memory. A retry queue behaves as the broker's does: a message published to it is
dead-lettered back to its work queue when its TTL (`x-message-ttl`) runs out, on the fake
clock, so "retry in 30 s" takes no real time. Not a RabbitMQ emulator: no prefetch, no
delivery limit, no routing through the topic exchange.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from pamqp.commands import Basic


@dataclass
class Delivery:
    """A message as the consumer receives it (the attributes it reads), and how it settled."""

    body: bytes
    headers: dict[str, Any]
    type: str | None = "OrderPaid"
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    timestamp: Any = None
    # Where it came through: what the consumer's span reports
    # (messaging/observability/instrumentation.py).
    exchange: str | None = ""
    routing_key: str | None = None
    delivery_tag: int | None = None
    settled: str | None = None  # "ack" | "nack-requeue" | "nack"

    async def ack(self) -> None:
        self.settled = "ack"

    async def nack(self, requeue: bool = True) -> None:
        self.settled = "nack-requeue" if requeue else "nack"


@dataclass
class Published:
    at: float  # fake-clock seconds
    queue: str
    headers: dict[str, Any]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0


class _Exchange:
    name = ""  # every publish of the consumer goes through the default exchange

    def __init__(self, broker: FakeBroker):
        self._broker = broker

    async def publish(self, message: aio_pika.Message, routing_key: str, **_: Any) -> Any:
        return self._broker.publish(message, routing_key)


class _Queue:
    def __init__(self, broker: FakeBroker, name: str, arguments: dict[str, Any]):
        self._broker, self.name, self.arguments = broker, name, arguments
        self.messages: list[Delivery] = []  # waiting, no consumer
        self.consumer: Any = None

    async def bind(self, exchange: Any, routing_key: str) -> None:
        name = exchange if isinstance(exchange, str) else exchange.name
        self._broker.bindings.append((name, routing_key, self.name))

    async def consume(self, callback: Any) -> str:
        self.consumer = callback
        waiting, self.messages = self.messages, []
        for delivery in waiting:
            self._broker.deliver(self.name, delivery)
        return f"ctag-{self.name}"

    async def cancel(self, _tag: str) -> None:
        self.consumer = None


class _Channel:
    def __init__(self, broker: FakeBroker):
        self._broker = broker
        self.is_closed = False
        self.default_exchange = _Exchange(broker)
        self.on_consumer_cancel_callbacks: set[Any] = set()  # never cancelled here

    async def get_underlay_channel(self) -> _Channel:
        return self

    @property
    def consumers(self) -> set[str]:
        return {f"ctag-{q.name}" for q in self._broker.queues.values() if q.consumer}

    async def get_exchange(self, name: str, ensure: bool = True) -> _Exchange:
        return self.default_exchange

    async def declare_exchange(self, name: str, *_: Any, **__: Any) -> _Exchange:
        return self.default_exchange  # every exchange routes by queue name here

    async def set_qos(self, **_: Any) -> None:
        return None

    async def declare_queue(self, name: str, durable: bool = True,
                            arguments: dict[str, Any] | None = None) -> _Queue:
        if name not in self._broker.queues:
            self._broker.queues[name] = _Queue(self._broker, name, dict(arguments or {}))
        return self._broker.queues[name]

    async def close(self) -> None:
        self.is_closed = True


class FakeBroker:
    """Queues by name; a publish to a queue with a TTL comes back to its dead-letter queue
    when the fake clock reaches it. `run()` delivers until nothing is left to happen."""

    def __init__(self, clock: FakeClock | None = None):
        self.clock = clock or FakeClock()
        self.queues: dict[str, _Queue] = {}
        self.bindings: list[tuple[str, str, str]] = []
        self.published: list[Published] = []
        self._timers: list[tuple[float, int, str, Delivery]] = []
        self._order = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.confirm = True  # False: the broker nacks every publish
        self.reconnect_callbacks: set[Any] = set()  # it never reconnects

    # what the consumer calls -------------------------------------------------------------
    async def channel(self, **_: Any) -> _Channel:
        return _Channel(self)

    def publish(self, message: aio_pika.Message, queue: str) -> Any:
        if not self.confirm:
            return Basic.Nack()
        headers = dict(message.headers or {})
        self.published.append(Published(self.clock.now, queue, headers))
        delivery = Delivery(
            body=message.body, headers=headers, type=message.type,
            message_id=message.message_id, correlation_id=message.correlation_id,
            content_type=message.content_type, content_encoding=message.content_encoding,
            timestamp=message.timestamp, routing_key=queue,
        )
        ttl = self.queues[queue].arguments.get("x-message-ttl")
        if ttl is not None:  # a retry queue: back to its work queue when the TTL runs out
            target = self.queues[queue].arguments["x-dead-letter-routing-key"]
            heapq.heappush(self._timers,
                           (self.clock.now + ttl / 1000, next(self._order), target, delivery))
        else:
            self.deliver(queue, delivery)
        return Basic.Ack()

    # what the test calls -------------------------------------------------------------------
    def deliver(self, queue: str, delivery: Delivery) -> None:
        """Hand `delivery` to the queue's consumer (in a task, as aio-pika does), or keep it."""
        q = self.queues[queue]
        if q.consumer is None:
            q.messages.append(delivery)
            return
        task = asyncio.get_running_loop().create_task(q.consumer(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, max_seconds: float = 3600.0) -> None:
        """Let the consumer work; whenever it is idle, move the clock to the next retry."""
        while True:
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
            if not self._timers or self._timers[0][0] > max_seconds:
                return
            due, _, queue, delivery = heapq.heappop(self._timers)
            self.clock.now = max(self.clock.now, due)
            self.deliver(queue, delivery)

    def waiting(self, queue: str) -> list[Delivery]:
        return list(self.queues[queue].messages)


@dataclass
class Attempts:
    """A `process` for the consumer that answers each attempt from a script, and notes when
    (on the fake clock) each attempt came."""

    clock: FakeClock
    script: list[Any]  # an Outcome to return, or an exception to raise; the last repeats
    at: list[float] = field(default_factory=list)

    async def __call__(self, event: Any) -> Any:
        self.at.append(self.clock.now)
        answer = self.script[min(len(self.at) - 1, len(self.script) - 1)]
        if isinstance(answer, BaseException):
            raise answer
        return answer
