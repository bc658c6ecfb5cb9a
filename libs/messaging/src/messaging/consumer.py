"""A consumer with one decision point for every message: ack, retry later, or dead-letter.

    poison (headers or body not ours)        -> <queue>.dlq at once, reason in headers
    another event holds its place (conflict) -> <queue>.dlq at once
    handler raised PermanentError            -> <queue>.dlq at once
    handler raised anything else (transient) -> <queue>.retry.<N>s, then <queue>.dlq when
                                                the configured delays are used up
    event before its predecessor             -> waits in the same retry queues (own budget)
    applied / duplicate / stale / ignored    -> ack (ignored: a type it has no handler for)

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
from collections.abc import Awaitable, Callable
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
from opentelemetry import trace
from opentelemetry.trace import Span
from pamqp.common import FieldValue

from contracts import EVENT_TYPES, Event, PoisonMessage, parse_event, utcnow
from messaging import headers as h
from messaging.broker import close_within
from messaging.inbox import Conflict, Outcome, OutOfOrder
from messaging.observability import correlation, instrumentation, metrics
from messaging.operations.broker_cancel import CancelWatch
from messaging.operations.flow_control import FlowControl
from messaging.publisher import (
    PublishFailed,
    copy_message,
    encodable,
    open_confirm_channel,
    publish_confirmed,
)
from messaging.topology import QueueTopology, ensure_exchange

log = logging.getLogger(__name__)

Process = Callable[[Event], Awaitable[Outcome]]

# How often a copy waiting for the publishing connection looks whether it is back, and the
# longest pause between tries of a copy that keeps failing on a connection that is up.
PUBLISH_RECONNECT_POLL_SECONDS = 0.2
PUBLISH_RETRY_MAX_SECONDS = 5.0


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (e.g. the mail server rejects the address)."""


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
        # Set before the span starts: the span processor puts it on the span (and its children).
        cid = correlation.valid_or_new(message.correlation_id)
        token = correlation.current.set(cid)
        try:
            with instrumentation.processing(self.topology.name, message) as span:
                await self._classify(message, span, probe)
        finally:
            correlation.current.reset(token)

    async def _classify(self, message: AbstractIncomingMessage, span: Span,
                        probe: bool) -> None:
        event_type = _label(message.type)
        metrics.CONSUMED.labels(self.service, event_type).inc()
        started = time.perf_counter()
        try:
            bad_headers = h.problem(message.headers)
            if bad_headers is not None:
                # Its own headers are what is wrong: the DLQ copy carries only ours.
                await self._dead_letter(message, "poison", PoisonMessage(bad_headers),
                                        keep_headers=False)
                return
            try:
                event = parse_event(message.body)
            except PoisonMessage as exc:
                await self._dead_letter(message, "poison", exc)
                return
            metrics.EVENT_LAG.labels(self.service, event_type).observe(
                max(0.0, (utcnow() - event.occurred_at).total_seconds()),
                exemplar=metrics.trace_exemplar(),
            )
            instrumentation.set_event(span, order_id=event.order_id, event_id=event.event_id,
                                      event_type=event.event_type)
            try:
                outcome = await self._process(event)
            except OutOfOrder as exc:
                await self._defer(message, exc)
                return
            except Conflict as exc:  # another event holds its place: no retry can fix that
                await self._dead_letter(message, "conflict", exc)
                return
            except PermanentError as exc:
                await self._dead_letter(message, "permanent", exc)
                return
            except Exception as exc:
                # The kill switch decides whether this failure is the message's own (it
                # spends its retry budget) or part of an outage (back to the queue unspent).
                spends_budget = await self.flow.outcome(
                    failed=True, probe=probe, error=f"{type(exc).__name__}: {exc}")
                if spends_budget:
                    await self._retry_or_dead_letter(message, exc)
                else:
                    await self._back_to_the_queue(message, exc)
                return
            await message.ack()
            await self.flow.outcome(failed=False, probe=probe)
            metrics.ACKED.labels(self.service, event_type, outcome.value).inc()
            if outcome is Outcome.CLASH:
                metrics.DUPLICATES.labels(self.service, event_type).inc()
                metrics.EVENT_ID_CLASHES.labels(self.service, event_type).inc()
                log.warning("event id clash: %s %s was applied before with other content; "
                            "this one is skipped (message %s)", event_type, event.event_id,
                            message.message_id)
            elif outcome is Outcome.IGNORED:  # a type this service does not handle
                metrics.IGNORED.labels(self.service, event_type).inc()
                log.info("ignored %s %s: not handled here", event_type, event.event_id)
            elif outcome is not Outcome.APPLIED:
                metrics.DUPLICATES.labels(self.service, event_type).inc()
                log.info("skipped %s %s: %s", event_type, event.event_id, outcome.value)
            else:
                log.info("applied %s %s", event_type, event.event_id)
        finally:
            metrics.HANDLER_SECONDS.labels(self.service, event_type).observe(
                time.perf_counter() - started, exemplar=metrics.trace_exemplar()
            )

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, exc: Exception
    ) -> None:
        attempt = _int_header(message, h.ATTEMPT)
        delays = self.topology.retry_delays
        if attempt >= len(delays):
            await self._dead_letter(message, "exhausted", exc, attempts=attempt + 1)
            return
        delay = delays[attempt]
        instrumentation.failed(trace.get_current_span(), "transient", exc)
        log.warning("attempt %d failed (%s: %s); retrying in %ds",
                    attempt + 1, type(exc).__name__, exc, delay)
        await self._republish(message, self.topology.retry_queue(delay), {h.ATTEMPT: attempt + 1})
        metrics.RETRIED.labels(self.service, _label(message.type), "transient").inc()

    async def _back_to_the_queue(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        """A failure the kill switch took for an outage: a fresh copy to the back of the work
        queue with the headers it came with, so neither the retry ladder nor the queue's
        delivery limit counts it."""
        instrumentation.failed(trace.get_current_span(), "paused", exc)
        log.info("failed while paused (%s: %s); back to %s unspent",
                 type(exc).__name__, exc, self.topology.name)
        await self._republish(message, self.topology.name, {})
        metrics.RETRIED.labels(self.service, _label(message.type), "paused").inc()

    async def _defer(self, message: AbstractIncomingMessage, exc: OutOfOrder) -> None:
        deferrals = _int_header(message, h.DEFERRALS)
        if deferrals >= self._max_deferrals:
            await self._dead_letter(message, "out-of-order", exc, attempts=deferrals + 1)
            return
        delays = self.topology.retry_delays
        delay = delays[min(deferrals, len(delays) - 1)]
        instrumentation.failed(trace.get_current_span(), "out-of-order", exc)
        log.info("deferred %ds: %s", delay, exc)
        await self._republish(
            message, self.topology.retry_queue(delay), {h.DEFERRALS: deferrals + 1}
        )
        metrics.RETRIED.labels(self.service, _label(message.type), "out-of-order").inc()

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        error_class: str,
        exc: Exception,
        attempts: int | None = None,
        keep_headers: bool = True,
    ) -> None:
        instrumentation.failed(trace.get_current_span(), error_class, exc)
        log.error("dead-lettered (%s) %s: %s: %s",
                  error_class, message.message_id, type(exc).__name__, exc)
        await self._republish(
            message,
            self.topology.dlq,
            {
                h.ERROR_CLASS: error_class,
                h.ERROR_SERVICE: self.service,
                h.ERROR_TYPE: type(exc).__name__,
                h.ERROR_MESSAGE: str(exc)[:1000],
                h.ERROR_ATTEMPTS: attempts if attempts is not None else 1,
                h.ERROR_AT: utcnow().isoformat(),
                h.ERROR_QUEUE: self.topology.name,
            },
            keep_headers=keep_headers,
        )
        metrics.DEAD_LETTERED.labels(self.service, _label(message.type), error_class).inc()

    async def _republish(
        self, message: AbstractIncomingMessage, queue: str, extra_headers: dict[str, FieldValue],
        keep_headers: bool = True,
    ) -> None:
        """Copy the message (body, ids, trace context) to `queue`, confirmed, then ack it."""
        assert self._publish_channel is not None
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
                await self._republish(message, queue, extra_headers, keep_headers=False)
                return
            # The copy itself cannot be made: the broker's own dead-lettering takes the
            # original to the DLQ rather than leave it hanging; the reason is logged.
            log.error("could not copy message %s to %s (%s: %s); rejected to the broker's "
                      "dead-lettering", message.message_id, queue, type(exc).__name__, exc)
            await message.reject(requeue=False)
            metrics.DEAD_LETTERED.labels(self.service, _label(message.type), "rejected").inc()
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
                await publish_confirmed(self._copies, copy, routing_key=queue)
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


def _label(event_type: str | None) -> str:
    """The `type` property as a metric label: anything off the wire but our event types is
    'unknown', so a flood of junk types cannot blow up the metrics' label cardinality."""
    return event_type if event_type in EVENT_TYPES else "unknown"


def _own_headers(message: AbstractIncomingMessage) -> dict[str, FieldValue]:
    """The message's headers minus the broker's bookkeeping (x-death and friends)."""
    return {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}


def _int_header(message: AbstractIncomingMessage, name: str) -> int:
    try:
        value = (message.headers or {}).get(name, 0)
        return max(0, int(value))  # type: ignore[arg-type]  # any AMQP value; non-numbers: below
    except (TypeError, ValueError):
        return 0
