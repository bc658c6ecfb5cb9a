"""The audit log: append-only, one row per event, ever."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from messaging.chassis.db import Statements, UtcDateTime

metadata = MetaData()

audit_log = Table(
    "audit_log",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("order_id", String(36), nullable=False, index=True),
    Column("sequence", Integer, nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("trace_id", String(32), nullable=True),
    Column("received_at", UtcDateTime, nullable=False),
    # The whole event as JSON, fields this release does not know included (a tolerant
    # reader keeps them); empty on rows written before the column existed.
    Column("body", Text, nullable=True),
)


# Built once, run with parameters: no statement rebuilt and re-keyed per event.
_APPEND = insert(audit_log)


async def append(conn: Statements, **row: object) -> None:
    await conn.execute(_APPEND, row)


_RECORD_COLUMNS = [c for c in audit_log.columns if c.name != "body"]


async def events_of_order(session: AsyncSession, order_id: str) -> list[dict]:
    rows = await session.execute(
        select(*_RECORD_COLUMNS).where(audit_log.c.order_id == order_id)
        .order_by(audit_log.c.sequence)
    )
    return [dict(row._mapping) for row in rows]


async def event(session: AsyncSession, event_id: str) -> dict | None:
    """One recorded event with its body, or None."""
    row = (await session.execute(
        select(audit_log).where(audit_log.c.event_id == event_id))).first()
    return dict(row._mapping) if row is not None else None
