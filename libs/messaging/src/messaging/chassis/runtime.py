"""Running a service: the background work next to the HTTP server, and the server itself.

`ConsumerRuntime` connects to the broker (retrying while it is down), runs the consumer,
trims the inbox on a timer, and stops in order on shutdown. `serve` runs uvicorn, which
turns SIGTERM and Ctrl-C into a graceful shutdown of the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial

from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import Event
from messaging import outbox
from messaging.broker import STOP_STEP_SECONDS, close_within, connect
from messaging.chassis import queue_stats
from messaging.chassis.settings import ConsumerSettings, OutboxSettings, ServiceSettings
from messaging.consumer import EventConsumer
from messaging.inbox import Inbox, Outcome
from messaging.observability import telemetry
from messaging.operations.flow_control import FlowControl
from messaging.spec import Subscriptions
from messaging.speed.inbox_batching import InboxBatcher
from messaging.topology import QueueTopology

log = logging.getLogger(__name__)

UPKEEP_INTERVAL_SECONDS = 3600

# The longest a SIGTERM'd service takes to end, whatever the broker does (docs/failure.md):
# uvicorn drains HTTP requests, then the lifespan stops the consumer (cancel, in-flight
# grace, channel closes) and closes the connections, each broker step STOP_STEP_SECONDS at
# most; last, the buffered spans are flushed.
HTTP_DRAIN_SECONDS = 10
IN_FLIGHT_GRACE_SECONDS = 10.0
SPAN_FLUSH_SECONDS = 5.0
STOP_BOUND_SECONDS = (
    HTTP_DRAIN_SECONDS + IN_FLIGHT_GRACE_SECONDS + 3 * STOP_STEP_SECONDS + SPAN_FLUSH_SECONDS
)


class BrokerLink:
    """A broker connection made in the background, so the service starts while it is down."""

    def __init__(self, url: str, name: str):
        self._url, self._name = url, name
        self._connected: asyncio.Future[AbstractRobustConnection] | None = None

    def start(self) -> None:
        """Begin connecting in the background (idempotent; a failed attempt is started anew)."""
        if self._connected is None or (
            self._connected.done()
            and not self._connected.cancelled()
            and self._connected.exception() is not None
        ):
            self._connected = asyncio.ensure_future(connect(self._url, self._name))

    async def connection(self) -> AbstractRobustConnection:
        self.start()
        assert self._connected is not None  # start() made it
        return await asyncio.shield(self._connected)

    async def check(self) -> None:
        """Readiness: raises unless connected right now."""
        if self._connected is None or not self._connected.done():
            raise ConnectionError("not connected yet")
        # A robust connection is not `is_closed` while it reconnects; `connected` tells.
        if not self._connected.result().connected.is_set():
            raise ConnectionError("connection lost; reconnecting")

    async def close(self) -> None:
        """Bounded (close_within): a broker that does not answer cannot hold up a stop."""
        if self._connected is None:
            return
        if not self._connected.done():
            # Still connecting: let the attempt finish, then close what it opened. Cancelled
            # in its last step (aio-pika waits for the open connection to be ready), the
            # connection would be lost open, its reader, writer and heartbeat running on.
            await asyncio.wait({self._connected}, timeout=STOP_STEP_SECONDS)
        if not self._connected.done():
            # A handshake nobody answers: cancel, and wait for the attempt to wind down no
            # longer than for any other stop step.
            self._connected.cancel()
            await asyncio.wait({self._connected}, timeout=STOP_STEP_SECONDS)
            return
        if self._connected.cancelled() or self._connected.exception() is not None:
            return
        await close_within(self._connected.result(), f"{self._name} connection")


class Relaying:
    """The outbox relay of a service that publishes, and its upkeep (published rows are
    forgotten after OUTBOX_RETENTION_HOURS): for a producer and a consumer alike."""

    def __init__(self, service: str, settings: OutboxSettings,
                 sessions: async_sessionmaker[AsyncSession],
                 connect: Callable[[], Awaitable[AbstractRobustConnection]]):
        self._service, self._settings, self._sessions = service, settings, sessions
        self.relay = outbox.OutboxRelay(
            sessions, connect, service=service, batch_size=settings.outbox_batch_size,
            poll_interval=settings.outbox_poll_seconds,
            idle_poll_interval=settings.outbox_idle_poll_seconds,
        )

    def start(self) -> list[asyncio.Task[None]]:
        retention = timedelta(hours=self._settings.outbox_retention_hours)
        forget = partial(outbox.forget_published_older_than, self._sessions, retention)
        return [
            asyncio.create_task(self.relay.run(), name=f"{self._service}-outbox-relay"),
            asyncio.create_task(run_periodically(forget, "outbox upkeep"),
                                name=f"{self._service}-outbox-upkeep"),
        ]


class ProducerRuntime:
    """The background half of a service that only produces: its broker link and its outbox
    relay. Requests are taken while the broker is down: the relay waits for the link."""

    def __init__(self, service: str, settings: ServiceSettings,
                 sessions: async_sessionmaker[AsyncSession]):
        self.broker = BrokerLink(settings.rabbitmq_url, service)
        self._relaying = Relaying(service, _outbox_settings(service, settings), sessions,
                                  self.broker.connection)
        self.relay = self._relaying.relay
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.broker.start()
        self._tasks = self._relaying.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.broker.close()

    async def check(self) -> None:
        """Readiness: connected to the broker right now."""
        await self.broker.check()


class ConsumerRuntime:
    """The consuming half of a service: broker link, consumer, inbox upkeep; and for a
    consumer that publishes (its handlers write outbox rows in the inbox transaction), the
    outbox relay and its upkeep (`Relaying`), as a producing service runs them.

    `outbox_sessions`: the database of that outbox (the service's own); None = publishes
    nothing. The relay publishes on the publishing connection, with confirms, and is woken
    after every applied message, so an event a handler staged goes out without a poll.
    """

    def __init__(
        self,
        service: str,
        settings: ConsumerSettings,
        inbox: Inbox,
        subscriptions: Subscriptions,
        outbox_sessions: async_sessionmaker[AsyncSession] | None = None,
    ):
        self.service = service
        self.broker = BrokerLink(settings.rabbitmq_url, service)
        # Retry and DLQ copies are published on a connection of their own (see EventConsumer).
        self.publisher = BrokerLink(settings.rabbitmq_url, f"{service}-publish")
        self._settings = settings
        self._inbox = inbox
        self._subscriptions = subscriptions
        # SPEED_LAYER=on: several messages per inbox transaction; each still acked, retried
        # or dead-lettered on its own (messaging/speed/inbox_batching.py).
        self._batcher = InboxBatcher(inbox, subscriptions, max_batch=settings.batch_size)
        self._consumer: EventConsumer | None = None
        # The kill switch and what it does: outlives a consumer rebuilt after a failed start.
        self.flow = FlowControl(service, settings.kill_switch, settings.prefetch)
        self._tasks: list[asyncio.Task[None]] = []
        self._relaying: Relaying | None = None
        self.relay: outbox.OutboxRelay | None = None
        if outbox_sessions is not None:
            self._relaying = Relaying(service, _outbox_settings(service, settings),
                                      outbox_sessions, self.publisher.connection)
            self.relay = self._relaying.relay

    async def process(self, event: Event) -> Outcome:
        """What the consumer calls for each message: `Inbox.process`, through the batcher
        when the speed layer is on."""
        if self._settings.speed:
            outcome = await self._batcher.process(event)
        else:
            outcome = await self._inbox.process(event, self._subscriptions)
        if outcome is Outcome.APPLIED and self.relay is not None:
            self.relay.notify()  # committed: whatever the handler staged can go out now
        return outcome

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._start_consumer(), name=f"{self.service}-consumer"),
            asyncio.create_task(run_periodically(self._trim_inbox, "inbox upkeep"),
                                name=f"{self.service}-inbox-upkeep"),
        ]
        if self._relaying is not None:
            self._tasks += self._relaying.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        await self.flow.close()
        await self._batcher.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(self.broker.close(), self.publisher.close())

    async def check(self) -> None:
        """Readiness: connected (both connections) and consuming, or paused on purpose (the
        kill switch or an operator: healthy, and the state is in /readyz's body)."""
        await self.broker.check()
        await self.publisher.check()
        if self._consumer is None or not await self._consumer.consuming():
            raise ConnectionError("not consuming")
        stalled = self._consumer.stalled_for()
        if stalled > self._settings.consumer_stall_seconds:
            raise ConnectionError(f"stalled: no message settled for {stalled:.0f}s")

    async def refresh_queue_stats(self) -> None:
        """Queue depths and consumer counts for /metrics (nothing until the consumer started)."""
        if self._consumer is None:
            return
        await queue_stats.refresh(
            await self.broker.connection(), self.service, self._consumer.topology
        )

    async def _start_consumer(self) -> None:
        backoff = 1.0
        while True:
            try:
                self._consumer = await self._new_consumer()
                return
            except Exception:
                log.exception("could not start consuming; retrying in %.0fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _new_consumer(self) -> EventConsumer:
        connection = await self.broker.connection()
        publish_connection = await self.publisher.connection()
        consumer = EventConsumer(
            service=self.service,
            topology=QueueTopology.for_service(self.service, self._settings.retry_delays),
            connection=connection,
            publish_connection=publish_connection,
            process=self.process,
            prefetch=self._settings.prefetch,
            max_deferrals=self._settings.max_deferrals,
            shutdown_grace_seconds=IN_FLIGHT_GRACE_SECONDS,
            flow=self.flow,
        )
        await consumer.start()
        return consumer

    async def _trim_inbox(self) -> None:
        retention = timedelta(hours=self._settings.inbox_retention_hours)
        removed = await self._inbox.forget_older_than(retention)
        if removed:
            log.info("inbox: forgot %d event ids older than %s", removed, retention)


def _outbox_settings(service: str, settings: object) -> OutboxSettings:
    """The settings of a consumer that publishes: they must include OutboxSettings."""
    if isinstance(settings, OutboxSettings):
        return settings
    raise TypeError(f"{service} publishes through an outbox: its settings must include "
                    "OutboxSettings")


async def run_periodically(
    job: Callable[[], Awaitable[object]], what: str, interval: float = UPKEEP_INTERVAL_SECONDS
) -> None:
    """Upkeep (trimming old records): now, then every `interval`; a failure is logged and
    the job tried again next time. Untraced: it belongs to no order."""
    while True:
        try:
            with telemetry.untraced():
                await job()
        except Exception:
            log.exception("%s failed; will try again", what)
        await asyncio.sleep(interval)

