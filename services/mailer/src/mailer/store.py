"""What mailer has sent: one row per event, written right after the SMTP server took the mail."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from messaging.chassis.db import Statements, UtcDateTime

metadata = MetaData()

sent_mails = Table(
    "sent_mails",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False, index=True),
    Column("to", String(320), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("sent_at", UtcDateTime, nullable=False),
)


_RECORD = insert(sent_mails)  # built once: its compiled form is found by a key made once


async def record_sent(conn: Statements, **row: object) -> None:
    await conn.execute(_RECORD, row)


async def mails_of_order(session: AsyncSession, order_id: str) -> list[dict]:
    rows = await session.execute(
        select(sent_mails).where(sent_mails.c.order_id == order_id).order_by(sent_mails.c.sent_at)
    )
    return [dict(row._mapping) for row in rows]
