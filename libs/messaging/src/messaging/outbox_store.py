"""The outbox table and `add_to_outbox`: what a use case needs to stage an event, with no
transport imported (the relay that publishes the rows is messaging/outbox.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from opentelemetry import propagate
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import WireEvent, utcnow
from messaging.chassis.db import Statements, UtcDateTime

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

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


# The events staged in the current context, while `staged_events()` collects them.
_staging: ContextVar[list[WireEvent] | None] = ContextVar("outbox_staging", default=None)


@contextmanager
def staged_events() -> Iterator[list[WireEvent]]:
    """Collect the events `add_to_outbox` stages inside the block (also in tasks started
    there). For the synchronous mode, which hands a consumer's events on in-process; what
    was staged in a transaction that rolled back is in the list too: see `committed`."""
    collected: list[WireEvent] = []
    token = _staging.set(collected)
    try:
        yield collected
    finally:
        _staging.reset(token)


async def committed(sessions: async_sessionmaker[AsyncSession],
                    events: Sequence[WireEvent]) -> list[WireEvent]:
    """Those of `events` whose outbox row is committed, once each, in the given order."""
    ids = {str(e.event_id) for e in events}
    if not ids:
        return []
    async with sessions() as session:
        found = set((await session.execute(
            select(outbox_table.c.event_id).where(outbox_table.c.event_id.in_(ids))
        )).scalars())
    unique = {str(e.event_id): e for e in events if str(e.event_id) in found}
    return list(unique.values())


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An unsent outbox row as written: what the relay publishes (the columns it reads)."""

    id: int
    event_id: str
    event_type: str
    routing_key: str
    order_id: str
    correlation_id: str
    body: str
    trace_context: str
    created_at: datetime


class OutboxHandOff(Protocol):
    """Takes rows a use case wrote, to publish them once committed without reading them
    back (the relay, messaging/outbox.py). `reserve` before the commit, so the relay's poll
    leaves them alone; `release` after it, saying whether the transaction committed (when
    that is unknown, False: the poll then finds the rows if they are there)."""

    def reserve(self, rows: Sequence[OutboxRow]) -> None: ...

    def release(self, rows: Sequence[OutboxRow], *, committed: bool) -> None: ...


class NoHandOff:
    """Nothing in-process publishes: rows wait for a relay's poll (or stay, in the
    synchronous mode)."""

    def reserve(self, rows: Sequence[OutboxRow]) -> None:
        return None

    def release(self, rows: Sequence[OutboxRow], *, committed: bool) -> None:
        return None


# Built once: a constant statement is compiled once and found in the compiled cache after.
_INSERT = insert(outbox_table)


async def add_to_outbox(session: AsyncSession | Statements, event: WireEvent) -> OutboxRow:
    """Stage `event` for publishing, in the caller's transaction, with the current trace.
    Returns the row as written (with its id), for an `OutboxHandOff` after the commit."""
    collecting = _staging.get()
    if collecting is not None:
        collecting.append(event)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    values: dict[str, Any] = {
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "routing_key": event.routing_key,
        "order_id": str(event.order_id),
        "correlation_id": event.correlation_id,
        "body": event.to_json().decode(),
        "trace_context": json.dumps(carrier),
        "created_at": utcnow(),
    }
    result = cast("CursorResult[Any]", await session.execute(_INSERT, {**values, "attempts": 0}))
    [row_id] = result.inserted_primary_key or (None,)
    if row_id is None:  # every dialect we run reports it (lastrowid, RETURNING)
        raise RuntimeError("the database did not report the outbox row's id")
    return OutboxRow(id=int(row_id), **values)
