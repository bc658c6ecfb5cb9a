"""What audit does with an event: record it, once, with where it came from."""

from __future__ import annotations

from opentelemetry import trace

from audit import store
from contracts import Event, utcnow
from messaging.chassis.db import Statements


async def record_event(event: Event, conn: Statements) -> None:
    span = trace.get_current_span().get_span_context()
    await store.append(
        conn,
        event_id=str(event.event_id),
        event_type=event.event_type,
        order_id=str(event.order_id),
        sequence=event.sequence,
        occurred_at=event.occurred_at,
        correlation_id=event.correlation_id,
        trace_id=format(span.trace_id, "032x") if span.is_valid else None,
        received_at=utcnow(),
        # As its handlers read it: the current version (an older one upcast), and every
        # field a newer producer added, untouched.
        body=event.to_json().decode(),
    )

