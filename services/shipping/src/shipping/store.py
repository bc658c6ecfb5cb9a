"""Shipments: one per paid order. SQL stays here."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, MetaData, String, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from messaging.chassis.db import Statements, UtcDateTime

metadata = MetaData()

SHIPPED, RETURN_REQUESTED = "shipped", "return_requested"

shipments = Table(
    "shipments",
    metadata,
    Column("shipment_id", String(36), primary_key=True),
    # One shipment per order: the database itself refuses a second.
    Column("order_id", String(36), nullable=False, unique=True),
    Column("customer_id", String(64), nullable=False),
    Column("email", String(320), nullable=False),
    Column("status", String(32), nullable=False),
    Column("carrier", String(64), nullable=False),
    Column("tracking_number", String(64), nullable=False),
    Column("shipped_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)


# Built once, run with parameters: no statement rebuilt and re-keyed per event.
_ADD = insert(shipments)


async def add(conn: Statements, **row: object) -> None:
    await conn.execute(_ADD, row)


async def set_status(conn: Statements, order_id: str, status: str, at: datetime) -> bool:
    """False if the order has no shipment."""
    result = await conn.execute(
        update(shipments).where(shipments.c.order_id == order_id)
        .values(status=status, updated_at=at)
    )
    return result.rowcount == 1


async def of_order(session: AsyncSession, order_id: str) -> list[dict]:
    rows = await session.execute(
        select(shipments.c.shipment_id, shipments.c.order_id, shipments.c.status,
               shipments.c.carrier, shipments.c.tracking_number, shipments.c.shipped_at)
        .where(shipments.c.order_id == order_id)
    )
    return [dict(row._mapping) for row in rows]
