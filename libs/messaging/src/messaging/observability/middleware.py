"""What is done around the handling of every delivery and every publish, apart from
deciding anything.

The consumer (messaging/consumer.py) decides and settles; each concern here watches it
through the same few hooks, in the order given (`DEFAULT_MIDDLEWARE`), and wraps the whole
handling (`handling`: entered in that order, left in reverse). Each is handed the delivery
with the service and queue it came to (`Consumed`) and keeps nothing between deliveries:

    Correlation  the correlation id of the delivery, in a context variable (logs, spans)
    Tracing      the span `process <queue>`, its event attributes, its failure class
    Metrics      consumed, lag, duration, acked/duplicate/ignored, retried, dead-lettered
    Logging      one line per settlement: applied, skipped, retrying, deferred, dead-lettered

Around a publish (messaging/publisher.py: `publish_confirmed`, the one place a message is
sent) the same concerns get one hook, `publishing`; only Tracing uses it (the span
`publish <exchange>`, its context written into the message's headers).

A new concern is a new Middleware passed to the consumer or the publish (`middleware=`),
not an edit of either.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import trace
from opentelemetry.context import Context

from contracts import EVENT_TYPES, Event, utcnow
from messaging.inbox import Outcome
from messaging.observability import correlation, instrumentation, metrics
from messaging.settlement import Ack, DeadLetter, Defer, Requeue, Retry, Settlement

# The consumer's own logger, as before the concerns left it: log filters keep working.
log = logging.getLogger("messaging.consumer")


@dataclass
class Consumed:
    """One delivery as the hooks see it: the message, the service and queue that took it,
    and its event once the body parsed."""

    message: AbstractIncomingMessage
    service: str
    queue: str
    event: Event | None = None

    @property
    def event_type(self) -> str:
        """The `type` property as a label: anything off the wire but our event types is
        'unknown', so a flood of junk types cannot blow up the metrics' label cardinality."""
        return self.message.type if self.message.type in EVENT_TYPES else "unknown"


@dataclass
class Published:
    """One publish as the hook sees it; `parent`: a trace context other than the current
    one (a replay's is the replayed message's)."""

    exchange: str
    routing_key: str
    message: aio_pika.Message
    parent: Context | None = None


class Middleware:
    """One concern around the handling of deliveries and around publishes; a hook not
    overridden does nothing."""

    # Not overridden, the two `with` hooks are a nullcontext rather than a generator's: each
    # delivery and each publish goes through every concern's.
    def handling(self, consumed: Consumed) -> AbstractContextManager[None]:
        """Around everything done with one delivery, from receipt to its settlement."""
        return contextlib.nullcontext()

    def parsed(self, consumed: Consumed) -> None:
        """The body is one of our events (`consumed.event`): it goes to the handler now."""

    def decided(self, consumed: Consumed, settlement: Settlement) -> None:
        """How it will be settled, before that is done."""

    def settled(self, consumed: Consumed, settlement: Settlement) -> None:
        """It was settled as decided (acked, or its copy confirmed and it acked), or given
        back to the broker because the copy could not be placed."""

    def rejected(self, consumed: Consumed) -> None:
        """No copy of it could be made: rejected to the broker's own dead-lettering."""

    def publishing(self, published: Published) -> AbstractContextManager[None]:
        """Around one publish, until the broker confirmed it (or it raised); the message's
        headers may still be added to."""
        return contextlib.nullcontext()


class Correlation(Middleware):
    """The delivery's correlation id (a new one when it has none, or a mad one) for the
    work it causes: set before the span starts, which the span processor puts it on."""

    @contextlib.contextmanager
    def handling(self, consumed: Consumed) -> Iterator[None]:
        token = correlation.current.set(correlation.valid_or_new(consumed.message.correlation_id))
        try:
            yield
        finally:
            correlation.current.reset(token)


class Tracing(Middleware):
    """A CONSUMER span around the handling (messaging/observability/instrumentation.py):
    what the event is once parsed, and why it failed (`error.type`) when it did; a
    PRODUCER span around a publish."""

    @contextlib.contextmanager
    def handling(self, consumed: Consumed) -> Iterator[None]:
        with instrumentation.processing(consumed.queue, consumed.message):
            yield

    def parsed(self, consumed: Consumed) -> None:
        event = consumed.event
        assert event is not None
        instrumentation.set_event(trace.get_current_span(), order_id=event.order_id,
                                  event_id=event.event_id, event_type=event.event_type)

    def decided(self, consumed: Consumed, settlement: Settlement) -> None:
        if not isinstance(settlement, Ack):
            instrumentation.failed(trace.get_current_span(), settlement.reason,
                                   settlement.error)

    @contextlib.contextmanager
    def publishing(self, published: Published) -> Iterator[None]:
        with instrumentation.publishing(published.exchange, published.routing_key,
                                        published.message, parent=published.parent):
            yield


class Metrics(Middleware):
    """The consumer's Prometheus series (messaging/observability/metrics.py)."""

    @contextlib.contextmanager
    def handling(self, consumed: Consumed) -> Iterator[None]:
        service, event_type = consumed.service, consumed.event_type
        metrics.child(metrics.CONSUMED, service, event_type).inc()
        started = time.perf_counter()
        try:
            yield
        finally:
            metrics.child(metrics.HANDLER_SECONDS, service, event_type).observe(
                time.perf_counter() - started, exemplar=metrics.trace_exemplar())

    def parsed(self, consumed: Consumed) -> None:
        assert consumed.event is not None
        metrics.child(metrics.EVENT_LAG, consumed.service, consumed.event_type).observe(
            max(0.0, (utcnow() - consumed.event.occurred_at).total_seconds()),
            exemplar=metrics.trace_exemplar(),
        )

    def settled(self, consumed: Consumed, settlement: Settlement) -> None:
        service, event_type = consumed.service, consumed.event_type
        match settlement:
            case Ack(outcome=outcome):
                metrics.child(metrics.ACKED, service, event_type, outcome.value).inc()
                if outcome is Outcome.CLASH:
                    metrics.child(metrics.DUPLICATES, service, event_type).inc()
                    metrics.child(metrics.EVENT_ID_CLASHES, service, event_type).inc()
                elif outcome is Outcome.IGNORED:
                    metrics.child(metrics.IGNORED, service, event_type).inc()
                elif outcome is not Outcome.APPLIED:
                    metrics.child(metrics.DUPLICATES, service, event_type).inc()
            case DeadLetter(reason=reason):
                metrics.child(metrics.DEAD_LETTERED, service, event_type, reason).inc()
            case Retry() | Defer() | Requeue():
                metrics.child(metrics.RETRIED, service, event_type, settlement.reason).inc()

    def rejected(self, consumed: Consumed) -> None:
        metrics.child(metrics.DEAD_LETTERED, consumed.service, consumed.event_type,
                      "rejected").inc()


class Logging(Middleware):
    """A failure is logged when decided (before its copy goes), an ack once done."""

    def decided(self, consumed: Consumed, settlement: Settlement) -> None:
        match settlement:
            case Retry(after_seconds=delay, attempt=attempt, error=exc):
                log.warning("attempt %d failed (%s: %s); retrying in %ds",
                            attempt, type(exc).__name__, exc, delay)
            case Requeue(error=exc):
                log.info("failed while paused (%s: %s); back to %s unspent",
                         type(exc).__name__, exc, consumed.queue)
            case Defer(after_seconds=delay, error=exc):
                log.info("deferred %ds: %s", delay, exc)
            case DeadLetter(reason=reason, error=exc):
                log.error("dead-lettered (%s) %s: %s: %s",
                          reason, consumed.message.message_id, type(exc).__name__, exc)

    def settled(self, consumed: Consumed, settlement: Settlement) -> None:
        if not isinstance(settlement, Ack) or consumed.event is None:
            return
        event_type, event_id = consumed.event_type, consumed.event.event_id
        if settlement.outcome is Outcome.CLASH:
            log.warning("event id clash: %s %s was applied before with other content; "
                        "this one is skipped (message %s)", event_type, event_id,
                        consumed.message.message_id)
        elif settlement.outcome is Outcome.IGNORED:  # a type this service does not handle
            log.info("ignored %s %s: not handled here", event_type, event_id)
        elif settlement.outcome is not Outcome.APPLIED:
            log.info("skipped %s %s: %s", event_type, event_id, settlement.outcome.value)
        else:
            log.info("applied %s %s", event_type, event_id)


# Every consumer's and every publish's concerns, outermost first: the correlation id is
# set before the span starts, and the metrics are observed inside the span (exemplars).
DEFAULT_MIDDLEWARE: tuple[Middleware, ...] = (Correlation(), Tracing(), Metrics(), Logging())
