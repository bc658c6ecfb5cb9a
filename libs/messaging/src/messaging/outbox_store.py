"""The outbox table and `add_to_outbox`: what a use case needs to stage an event, with no
transport imported (the relay that publishes the rows is messaging/outbox.py)."""

from __future__ import annotations

import json

from opentelemetry import propagate
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Event, utcnow
from messaging.db import UtcDateTime

metadata = MetaData()

outbox_table = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_type", String(64), nullable=False),
    Column("routing_key", String(128), nullable=False),
    Column("order_id", String(36), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("body", Text, nullable=False),
    # The W3C trace context of the request that wrote the row (traceparent, tracestate).
    Column("trace_context", Text, nullable=False, default="{}"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("published_at", UtcDateTime, nullable=True, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)


async def add_to_outbox(session: AsyncSession, event: Event) -> None:
    """Stage `event` for publishing, in the caller's transaction, with the current trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    await session.execute(
        insert(outbox_table).values(
            event_id=str(event.event_id),
            event_type=event.event_type,
            routing_key=event.routing_key,
            order_id=str(event.order_id),
            correlation_id=event.correlation_id,
            body=event.to_json().decode(),
            trace_context=json.dumps(carrier),
            created_at=utcnow(),
            attempts=0,
        )
    )
