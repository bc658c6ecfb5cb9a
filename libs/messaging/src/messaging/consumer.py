"""A consumer: every delivery goes the same five steps, and ends settled.

    receive    take the delivery (the kill switch says whether it is the probe)
    parse      headers and body ours? an Event, else PoisonMessage
    process    the service's `process` (handler + inbox): an Outcome, or an exception
    settle     messaging/settlement.py decides, without I/O: ack, retry after N s, defer,
               back to the queue, or dead-letter with a reason
    carry out  ack; or copy to <queue>.retry.<N>s / the work queue / <queue>.dlq, then ack

Tracing, metrics, the correlation id and logging watch these steps as middleware
(messaging/observability/middleware.py); the consumer itself logs only its own trouble
(a copy it cannot make or place, a delivery it cannot settle).

Its kill switch (messaging/operations/killswitch.py, done by
messaging/operations/flow_control.py) watches the
transient failures: when they say a dependency is down it stops consuming, and a message
that fails then (the one that trips it, those in flight, a failed probe) goes back to the
work queue as a fresh copy with its retry budget unspent (docs/failure.md#the-kill-switch).

The copy to a retry or dead-letter queue is confirmed by the broker before the original
is acked, so a crash in between yields a duplicate (the inbox absorbs it), never a loss.
While the publishing connection is away, the original stays unacked and the copy waits
for it (`_copy_when_connected`). A message that kills the process never reaches that
point; the broker redelivers it and the queue's delivery limit dead-letters it if it keeps
doing so. A copy that cannot be encoded with the message's own headers is made with ours
only; one that cannot be encoded at all is rejected, and the broker's own dead-lettering
(the work queue's dead-letter target is the DLQ) takes it: no delivery is left unsettled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aio_pika import Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelPreconditionFailed
from pamqp.common import FieldValue

from contracts import Event, PoisonMessage, parse_event, utcnow
from messaging import headers as h
from messaging.broker import close_within
from messaging.inbox import Outcome
from messaging.observability.middleware import DEFAULT_MIDDLEWARE, Consumed, Middleware
from messaging.operations.broker_cancel import CancelWatch
from messaging.operations.flow_control import FlowControl
from messaging.publisher import (
    PublishFailed,
    copy_message,
    encodable,
    open_confirm_channel,
    publish_confirmed,
)
from messaging.settlement import (
    Ack,
    DeadLetter,
    Defer,
    Requeue,
    Retry,
    Settlement,
    settle,
    transient,
)
from messaging.topology import QueueTopology, ensure_exchange

log = logging.getLogger(__name__)

Process = Callable[[Event], Awaitable[Outcome]]

# How often a copy waiting for the publishing connection looks whether it is back, and the
# longest pause between tries of a copy that keeps failing on a connection that is up.
PUBLISH_RECONNECT_POLL_SECONDS = 0.2
PUBLISH_RETRY_MAX_SECONDS = 5.0


class EventConsumer:
    def __init__(
        self,
        *,
        service: str,
        topology: QueueTopology,
        connection: AbstractRobustConnection,
        process: Process,
        publish_connection: AbstractRobustConnection | None = None,
        prefetch: int = 32,
        max_deferrals: int = 10,
        shutdown_grace_seconds: float = 10.0,
        flow: FlowControl | None = None,
        middleware: Sequence[Middleware] | None = None,
    ):
        self.service = service
        self.topology = topology
        self._connection = connection
        # Copies to the retry queues and the DLQ go out on their own connection when given:
        # a broker alarm blocks a publishing connection, and must not block our acks with it.
        self._publish_connection = publish_connection or connection
        self._publish_channel: AbstractChannel | None = None
        self._copies: AbstractExchange | None = None  # the service's own (topology.exchange)
        self._process = process
        self._prefetch = prefetch
        self._max_deferrals = max_deferrals
        self._grace = shutdown_grace_seconds
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        # Subscribes, pauses and probes as the kill switch says; the runtime passes its own
        # so that the state outlives this consumer.
        self.flow = flow or FlowControl(service, prefetch=prefetch)
        self._cancel_watch: CancelWatch | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        # When in-flight work last moved (a message settled, or work began after a lull):
        # readiness fails when it stops moving (see `stalled_for`).
        self._last_moved = time.monotonic()
        # What watches every delivery (spans, metrics, logs): outermost first.
        self._middleware = tuple(DEFAULT_MIDDLEWARE if middleware is None else middleware)

    @property
    def is_consuming(self) -> bool:
        """Subscribed, or paused on purpose (kill switch, operator), on an open channel."""
        return (self.flow.subscribed or self.flow.on_purpose) and self._channel is not None \
            and not self._channel.is_closed

    async def consuming(self) -> bool:
        """`is_consuming`, and while subscribed the broker has not cancelled the consumer
        (broker_cancel); paused on purpose, there is nothing for it to cancel."""
        if not self.is_consuming or self._cancel_watch is None:
            return False
        return await self._cancel_watch.consuming() if self.flow.subscribed else True

    def stalled_for(self) -> float:
        """Seconds that messages have been in flight without any of them settling (0 when
        nothing is in flight). A consumer whose prefetch is taken by work that never ends
        takes no more messages: it must not say it is ready."""
        if not self._in_flight:
            return 0.0
        return time.monotonic() - self._last_moved

    async def start(self) -> None:
        await ensure_exchange(self._connection)
        self._publish_channel = await open_confirm_channel(self._publish_connection)
        self._channel = await self._connection.channel()
        try:
            try:
                self._queue = await self.topology.declare(self._channel)
            except ChannelPreconditionFailed as exc:
                log.warning("%s: queues exist with other arguments than this version "
                            "declares (%s); using them as they are", self.topology.name, exc)
                await close_within(self._channel, f"{self.topology.name} channel")
                self._channel = await self._connection.channel()
                self._queue = await self.topology.declare(self._channel, as_they_are=True)
            self._copies = await self._publish_channel.get_exchange(
                self.topology.exchange, ensure=False)
            self._cancel_watch = CancelWatch(self.service, self.topology.name, self._channel,
                                             self._connection)
            # The subscription (its prefetch, its tag) is the kill switch's to make.
            await self.flow.attach(self._channel, self._queue, self._on_message)
            await self._cancel_watch.start(lambda: self.flow.tag)
        except BaseException:
            # The caller retries with a new consumer, or is stopping (cancelled): bounded.
            await asyncio.gather(
                close_within(self._channel, f"{self.topology.name} channel"),
                close_within(self._publish_channel, f"{self.topology.name} publish channel"),
            )
            raise
        log.info("consuming %s (prefetch %d)", self.topology.name, self._prefetch)

    async def stop(self) -> None:
        """Stop taking messages, let in-flight ones finish, then close the channels.

        Bounded whatever the broker does: at most STOP_STEP_SECONDS for the cancel, the
        grace for in-flight messages, STOP_STEP_SECONDS for the closes. Whatever is still
        unacked when the channel (or, at the latest, the process) goes is requeued.
        """
        if self._cancel_watch is not None:
            self._cancel_watch.stop()
        await self.flow.detach()
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=self._grace)
            if pending:
                log.warning("%d message(s) still in flight at shutdown; released", len(pending))
        await asyncio.gather(*(
            close_within(channel, f"{self.topology.name} {what}")
            for channel, what in ((self._channel, "channel"),
                                  (self._publish_channel, "publish channel"))
            if channel is not None and not channel.is_closed
        ))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        probe = self.flow.admit()
        task = asyncio.current_task()
        if not self._in_flight:
            self._last_moved = time.monotonic()  # idle time is not a stall
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handle(message, probe)
        except Exception:
            # Reached when the broker connection failed mid-way (ack, or the copy to a
            # retry/DLQ queue): the message is redelivered after reconnect. Anything else
            # must not leave it unsettled: the broker dead-letters what we reject.
            log.exception("could not settle message %s", message.message_id)
            with contextlib.suppress(Exception):
                if not message.processed:
                    await message.reject(requeue=False)
        finally:
            self._last_moved = time.monotonic()
            if task is not None:
                self._in_flight.discard(task)
            if probe:
                self.flow.release_probe()

    async def _handle(self, message: AbstractIncomingMessage, probe: bool = False) -> None:
        """Parse, process, settle, carry out, inside every concern's `handling`."""
        consumed = Consumed(message, self.service, self.topology.name)
        with contextlib.ExitStack() as around:
            for concern in self._middleware:
                around.enter_context(concern.handling(consumed))
            result = await self._parse_and_process(consumed)
            spend = True
            if transient(result):
                # The kill switch decides whether this failure is the message's own (it
                # spends its retry budget) or part of an outage (back to the queue unspent).
                spend = await self.flow.outcome(
                    failed=True, probe=probe, error=f"{type(result).__name__}: {result}")
            settlement = settle(result, message.headers, retry_delays=self.topology.retry_delays,
                                max_deferrals=self._max_deferrals, spend=spend)
            for concern in self._middleware:
                concern.decided(consumed, settlement)
            await self._carry_out(consumed, settlement)
            if isinstance(settlement, Ack):
                await self.flow.outcome(failed=False, probe=probe)
            for concern in self._middleware:
                concern.settled(consumed, settlement)

    async def _parse_and_process(self, consumed: Consumed) -> Outcome | Exception:
        """The handler's outcome or exception; PoisonMessage for what is not ours (its
        headers are checked like its body, before anything else)."""
        problem = h.problem(consumed.message.headers)
        if problem is not None:
            return PoisonMessage(problem)
        try:
            consumed.event = parse_event(consumed.message.body)
        except PoisonMessage as exc:
            return exc
        for concern in self._middleware:
            concern.parsed(consumed)
        try:
            return await self._process(consumed.event)
        except Exception as exc:
            return exc

    async def _carry_out(self, consumed: Consumed, settlement: Settlement) -> None:
        match settlement:
            case Ack():
                await consumed.message.ack()
            case Retry(after_seconds=delay, attempt=attempt):
                await self._republish(consumed, self.topology.retry_queue(delay),
                                      {h.ATTEMPT: attempt})
            case Defer(after_seconds=delay, deferrals=deferrals):
                await self._republish(consumed, self.topology.retry_queue(delay),
                                      {h.DEFERRALS: deferrals})
            case Requeue():
                await self._republish(consumed, self.topology.name, {})
            case DeadLetter():
                await self._republish(consumed, self.topology.dlq, self._reason(settlement),
                                      keep_headers=settlement.keep_headers)

    def _reason(self, dead: DeadLetter) -> dict[str, FieldValue]:
        """The DLQ copy's headers that say why it is there (messaging/headers.py)."""
        return {
            h.ERROR_CLASS: dead.reason,
            h.ERROR_SERVICE: self.service,
            h.ERROR_TYPE: type(dead.error).__name__,
            h.ERROR_MESSAGE: str(dead.error)[:1000],
            h.ERROR_ATTEMPTS: dead.attempts,
            h.ERROR_AT: utcnow().isoformat(),
            h.ERROR_QUEUE: self.topology.name,
        }

    async def _republish(
        self, consumed: Consumed, queue: str, extra_headers: dict[str, FieldValue],
        keep_headers: bool = True,
    ) -> None:
        """Copy the message (body, ids, trace context) to `queue`, confirmed, then ack it."""
        assert self._publish_channel is not None
        message = consumed.message
        own = _own_headers(message) if keep_headers else {}
        try:
            copy = copy_message(message, {**own, **extra_headers})
            if not encodable(copy):
                raise ValueError("a header or property AMQP cannot encode")
        except Exception as exc:
            if keep_headers:
                # Its own headers may be what cannot go on the wire: ours alone, so the copy
                # still carries our counters or our reason (error-*).
                log.warning("could not copy message %s to %s with its headers (%s: %s); "
                            "copying it with ours only", message.message_id, queue,
                            type(exc).__name__, exc)
                await self._republish(consumed, queue, extra_headers, keep_headers=False)
                return
            # The copy itself cannot be made: the broker's own dead-lettering takes the
            # original to the DLQ rather than leave it hanging; the reason is logged.
            log.error("could not copy message %s to %s (%s: %s); rejected to the broker's "
                      "dead-lettering", message.message_id, queue, type(exc).__name__, exc)
            await message.reject(requeue=False)
            for concern in self._middleware:
                concern.rejected(consumed)
            return
        try:
            await self._copy_when_connected(message, copy, queue)
        except PublishFailed:
            # Could not park it: give it back to the queue rather than lose it.
            log.exception("could not move message %s to %s; requeued", message.message_id, queue)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _copy_when_connected(
        self, message: AbstractIncomingMessage, copy: Message, queue: str
    ) -> None:
        """Publish the copy, confirmed. A copy that fails for the connection (it is away,
        its channel closed) is tried again once the publishing connection is back, while
        the original stays unacked; if the consuming channel goes meanwhile, the broker
        redelivers the original and this gives up (raises)."""
        assert self._copies is not None
        pause = PUBLISH_RECONNECT_POLL_SECONDS
        while True:
            try:
                await publish_confirmed(self._copies, copy, routing_key=queue,
                                        middleware=self._middleware)
                return
            except PublishFailed:
                raise
            except Exception as exc:
                if self._channel is None or self._channel.is_closed:
                    raise
                log.warning("could not copy message %s to %s (%s: %s): the publishing "
                            "connection is away; kept unacked until it is back",
                            message.message_id, queue, type(exc).__name__, exc)
            await self._publishing_back()
            # Back, but failing again (a flapping link): try less and less often.
            await asyncio.sleep(pause)
            pause = min(pause * 2, PUBLISH_RETRY_MAX_SECONDS)

    async def _publishing_back(self) -> None:
        """Return once the publishing connection and channel are up again (raises
        ConnectionError if the consuming channel closes meanwhile)."""
        assert self._publish_channel is not None
        while not (self._publish_connection.connected.is_set()
                   and not self._publish_channel.is_closed):
            if self._channel is None or self._channel.is_closed:
                raise ConnectionError("the consuming channel closed: redelivered")
            await asyncio.sleep(PUBLISH_RECONNECT_POLL_SECONDS)


def _own_headers(message: AbstractIncomingMessage) -> dict[str, FieldValue]:
    """The message's headers minus the broker's bookkeeping (x-death and friends)."""
    return {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
