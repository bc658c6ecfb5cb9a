"""An in-memory stand-in for the broker operations Mini EC uses, on a fake clock.

For unit tests that run the real EventConsumer (start, its copies to the retry queues and
the DLQ, acks), the real publisher (`publish_confirmed`) or the real topology declaration,
with queues in memory and no RabbitMQ:

- exchanges route as RabbitMQ's do: the default exchange ("") by queue name, a direct
  exchange by equal routing key, a topic exchange by its bindings' patterns (`*` one word,
  `#` any number); a mandatory publish nobody is bound for raises as aio-pika does;
- a queue with a TTL (`x-message-ttl`, a retry queue) dead-letters each message through its
  `x-dead-letter-exchange` when the TTL runs out on the fake clock, so "retry in 30 s" takes
  no real time; a message rejected (or nacked) without requeue is dead-lettered the same way;
- `confirm = False` makes the broker nack every publish.

Not a RabbitMQ emulator: no prefetch, no delivery limit, no redelivery of a message
requeued by a nack (its `settled` says so; a test that wants it again delivers it again).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aiormq.exceptions import ChannelNotFoundEntity, DeliveryError
from pamqp.commands import Basic

from messaging.spec import topic_matches
from messaging.testing.clock import FakeClock


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
    # "ack" | "nack-requeue" | "nack" | "reject-requeue" | "reject"
    settled: str | None = None
    # The queue it was delivered from and its broker: where "nack"/"reject" dead-letter it.
    queue: str | None = field(default=None, repr=False, compare=False)
    broker: FakeBroker | None = field(default=None, repr=False, compare=False)

    @property
    def processed(self) -> bool:
        return self.settled is not None

    async def ack(self) -> None:
        self.settled = "ack"

    async def nack(self, requeue: bool = True) -> None:
        self._settle("nack", requeue)

    async def reject(self, requeue: bool = False) -> None:
        self._settle("reject", requeue)

    def _settle(self, how: str, requeue: bool) -> None:
        self.settled = f"{how}-requeue" if requeue else how
        if not requeue and self.broker is not None and self.queue is not None:
            self.broker.dead_letter(self.queue, self)


@dataclass
class Published:
    """One message a client published, as it reached one queue."""

    at: float  # fake-clock seconds
    queue: str
    headers: dict[str, Any]
    exchange: str = ""
    routing_key: str = ""
    body: bytes = b""


class _Exchange:
    """A handle on an exchange by name, as aio-pika's (whether it exists is the broker's)."""

    def __init__(self, broker: FakeBroker, name: str):
        self._broker, self.name = broker, name

    async def publish(self, message: aio_pika.Message, routing_key: str,
                      mandatory: bool = True, **_: Any) -> Any:
        return self._broker.publish(message, self.name, routing_key, mandatory=mandatory)


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
        self.default_exchange = _Exchange(broker, "")
        self.on_consumer_cancel_callbacks: set[Any] = set()  # never cancelled here

    async def get_underlay_channel(self) -> _Channel:
        return self

    @property
    def consumers(self) -> set[str]:
        return {f"ctag-{q.name}" for q in self._broker.queues.values() if q.consumer}

    async def get_exchange(self, name: str, ensure: bool = True) -> _Exchange:
        if ensure and name not in self._broker.exchanges:
            raise ChannelNotFoundEntity(f"NOT_FOUND - no exchange '{name}'")
        return _Exchange(self._broker, name)

    async def declare_exchange(self, name: str, type: Any = "direct",  # noqa: A002 (aio-pika's)
                               *_: Any, **__: Any) -> _Exchange:
        kind = type.value if isinstance(type, aio_pika.ExchangeType) else str(type)
        self._broker.exchanges.setdefault(name, kind)
        return _Exchange(self._broker, name)

    async def set_qos(self, **_: Any) -> None:
        return None

    async def declare_queue(self, name: str, durable: bool = True,
                            arguments: dict[str, Any] | None = None,
                            passive: bool = False) -> _Queue:
        if name not in self._broker.queues:
            if passive:
                raise ChannelNotFoundEntity(f"NOT_FOUND - no queue '{name}'")
            self._broker.queues[name] = _Queue(self._broker, name, dict(arguments or {}))
        return self._broker.queues[name]

    async def close(self) -> None:
        self.is_closed = True


class FakeBroker:
    """Exchanges, bindings and queues in memory, on a fake clock. Pass it where a connection
    goes (`EventConsumer(connection=broker)`); `run()` delivers until nothing is left to
    happen, moving the clock to each TTL as it runs out."""

    def __init__(self, clock: FakeClock | None = None):
        self.clock = clock or FakeClock()
        self.exchanges: dict[str, str] = {"": "direct"}  # name -> type
        self.queues: dict[str, _Queue] = {}
        self.bindings: list[tuple[str, str, str]] = []  # (exchange, routing key, queue)
        self.published: list[Published] = []
        self._timers: list[tuple[float, int, str, Delivery]] = []
        self._order = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.confirm = True  # False: the broker nacks every publish
        self.reconnect_callbacks: set[Any] = set()  # it never reconnects
        self.connected = asyncio.Event()
        self.connected.set()

    # what a client calls -----------------------------------------------------------------
    async def channel(self, **_: Any) -> _Channel:
        return _Channel(self)

    def publish(self, message: aio_pika.Message, exchange: str, routing_key: str,
                *, mandatory: bool = True) -> Any:
        """Route a client's publish; the broker's confirm (or nack), or DeliveryError for a
        mandatory message no queue is bound for."""
        if not self.confirm:
            return Basic.Nack()
        if exchange not in self.exchanges:
            raise ChannelNotFoundEntity(f"NOT_FOUND - no exchange '{exchange}'")
        queues = self.route(exchange, routing_key)
        if not queues and mandatory:
            raise DeliveryError(None, Basic.Return(
                reply_code=312, reply_text="NO_ROUTE", exchange=exchange,
                routing_key=routing_key))
        headers = dict(message.headers or {})
        for queue in queues:
            self.published.append(Published(self.clock.now, queue, headers, exchange,
                                             routing_key, message.body))
            self._enqueue(queue, _delivery_of(message, exchange, routing_key))
        return Basic.Ack()

    def route(self, exchange: str, routing_key: str) -> list[str]:
        """The queues a message published to `exchange` with `routing_key` reaches."""
        if exchange == "":
            return [routing_key] if routing_key in self.queues else []
        topic = self.exchanges.get(exchange) == "topic"
        reached = [queue for name, key, queue in self.bindings if name == exchange
                   and (topic_matches(key, routing_key) if topic else key == routing_key)]
        return list(dict.fromkeys(reached))  # bound twice, delivered once

    def dead_letter(self, queue: str, delivery: Delivery) -> None:
        """What the broker does with a message that expired in, or was rejected from,
        `queue`: on through its dead-letter exchange, or dropped if it has none."""
        arguments = self.queues[queue].arguments
        exchange = arguments.get("x-dead-letter-exchange")
        if exchange is None or exchange not in self.exchanges:
            return
        key = arguments.get("x-dead-letter-routing-key", delivery.routing_key or "")
        for target in self.route(exchange, key):
            self._enqueue(target, _delivery_of(delivery, exchange, key))

    def _enqueue(self, queue: str, delivery: Delivery) -> None:
        ttl = self.queues[queue].arguments.get("x-message-ttl")
        if ttl is None:
            self.deliver(queue, delivery)
            return
        # A wait queue: nobody consumes it; the message moves on when its TTL runs out.
        heapq.heappush(self._timers,
                       (self.clock.now + ttl / 1000, next(self._order), queue, delivery))

    # what the test calls -------------------------------------------------------------------
    def deliver(self, queue: str, delivery: Delivery) -> None:
        """Hand `delivery` to the queue's consumer (in a task, as aio-pika does), or keep it."""
        q = self.queues[queue]
        delivery.queue, delivery.broker = queue, self
        if q.consumer is None:
            q.messages.append(delivery)
            return
        task = asyncio.get_running_loop().create_task(q.consumer(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, max_seconds: float = 3600.0) -> None:
        """Let the consumers work; whenever they are idle, move the clock to the next TTL."""
        while True:
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
            if not self._timers or self._timers[0][0] > max_seconds:
                return
            due, _, queue, delivery = heapq.heappop(self._timers)
            self.clock.now = max(self.clock.now, due)
            self.dead_letter(queue, delivery)

    def waiting(self, queue: str) -> list[Delivery]:
        """The messages in `queue` that no consumer has taken."""
        return list(self.queues[queue].messages)


def _delivery_of(message: aio_pika.Message | Delivery, exchange: str,
                 routing_key: str) -> Delivery:
    """A fresh delivery of `message` (published, or dead-lettered) to one queue."""
    return Delivery(
        body=message.body, headers=dict(message.headers or {}), type=message.type,
        message_id=message.message_id, correlation_id=message.correlation_id,
        content_type=message.content_type, content_encoding=message.content_encoding,
        timestamp=message.timestamp, exchange=exchange, routing_key=routing_key)


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
