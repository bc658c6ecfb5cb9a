"""The in-process dispatcher: hand an event to its handlers right now, one after the other.

The synchronous counterpart of publishing to RabbitMQ (like the seed's
`DomainEventDispatcher.DispatchAsync`). It is the in-process counterpart of the exchange:
it decides which consumer gets which event type. Consumers are registered per event type,
or for several at once (`subscribe`). `dispatch` awaits each in registration order, inside
its own span, and logs and counts it. What a consumer then does with the event comes from
that service's subscriptions (messaging/spec.py), the same registry its RabbitMQ consumer
uses.

A failing handler does not stop the others, and `dispatch` does not raise: it returns the
failures so the caller decides what they mean (the sync composition root reports them,
see docs/sync-then-async.md). Each handler is independent, as each consuming service is in
the asynchronous deployment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from contracts import EVENT_TYPES, Event, WireEvent, upcast
from messaging.observability import correlation, metrics, telemetry

log = logging.getLogger(__name__)

# What a registered handler gets: the event alone. Whatever it needs besides (a session,
# an inbox, an SMTP sender) the composition root binds in when it registers it.
DispatchHandler = Callable[[Event], Awaitable[object]]


@dataclass(frozen=True)
class HandlerFailure:
    handler: str
    event_type: str
    event_id: str
    error: Exception

    def __str__(self) -> str:
        return f"{self.handler} failed on {self.event_type} {self.event_id}: {self.error!r}"


class Dispatcher:
    def __init__(self, tracer: trace.Tracer | None = None):
        self._handlers: dict[str, list[tuple[str, DispatchHandler]]] = {}
        self._tracer = tracer or trace.get_tracer(__name__)

    def register(self, event_type: str | type[Event], name: str, handler: DispatchHandler) -> None:
        """Call `handler` for every event of `event_type`, after those registered before it."""
        type_name = event_type if isinstance(event_type, str) else _type_name(event_type)
        if type_name not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_name!r}; known: {sorted(EVENT_TYPES)}")
        registered = self._handlers.setdefault(type_name, [])
        if any(existing == name for existing, _ in registered):
            raise ValueError(f"a handler named {name!r} is already registered for {type_name}")
        registered.append((name, handler))

    def subscribe(
        self, name: str, handler: DispatchHandler, event_types: Iterable[str] | None = None
    ) -> None:
        """Register one handler for several event types (all of them by default), like a
        service's queue bound to `order.*` or `#`."""
        for event_type in event_types if event_types is not None else EVENT_TYPES:
            self.register(event_type, name, handler)

    def handlers_for(self, event_type: str) -> list[str]:
        return [name for name, _ in self._handlers.get(event_type, [])]

    async def dispatch(self, published: WireEvent) -> list[HandlerFailure]:
        """Await each handler of the event in turn; return the ones that raised. An event
        published in an older version is upcast first, as a consumer reading it from the
        broker upcasts it (contracts.upcasting): handlers see one shape in both modes."""
        event = upcast(published)
        failures: list[HandlerFailure] = []
        # Outside an HTTP request (a script, a test) the event still names its correlation.
        token = correlation.current.set(correlation.get() or event.correlation_id)
        try:
            for name, handler in self._handlers.get(event.event_type, []):
                failure = await self._call(name, handler, event)
                if failure is not None:
                    failures.append(failure)
        finally:
            correlation.current.reset(token)
        return failures

    async def dispatch_all(self, events: Iterable[WireEvent]) -> list[HandlerFailure]:
        """Dispatch events in the order they were recorded (paid before refunded)."""
        failures: list[HandlerFailure] = []
        for event in events:
            failures += await self.dispatch(event)
        return failures

    async def _call(
        self, name: str, handler: DispatchHandler, event: Event
    ) -> HandlerFailure | None:
        attributes = {
            telemetry.HANDLER: name, telemetry.EVENT_TYPE: event.event_type,
            telemetry.EVENT_ID: str(event.event_id), telemetry.ORDER_ID: str(event.order_id),
            telemetry.ATTRIBUTE: event.correlation_id,
        }
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"dispatch {event.event_type} to {name}", kind=SpanKind.INTERNAL,
            attributes=attributes, record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                result = await handler(event)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                metrics.DISPATCHED.labels(name, event.event_type, "failed").inc()
                log.exception("dispatch: %s failed on %s %s after %.1f ms", name,
                              event.event_type, event.event_id, _ms_since(started))
                return HandlerFailure(name, event.event_type, str(event.event_id), exc)
            # Inbox.process returns an Outcome (applied / duplicate / stale): say which.
            outcome = getattr(result, "value", "done")
            metrics.DISPATCHED.labels(name, event.event_type, outcome).inc()
            log.info("dispatch: %s handled %s %s (%s) in %.1f ms", name, event.event_type,
                     event.event_id, outcome, _ms_since(started))
        return None


def _type_name(event_cls: type[Event]) -> str:
    return str(event_cls.model_fields["event_type"].default)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
