"""Payments table and its queries. An Order goes in and comes out; SQL stays here."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import utcnow
from messaging.chassis.db import Statements, UtcDateTime
from payment.domain import Order, PaymentStatus

metadata = MetaData()

payments = Table(
    "payments",
    metadata,
    Column("payment_id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False, unique=True),  # an order is paid once
    Column("customer_id", String(64), nullable=False),
    Column("email", String(320), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("idempotency_key", String(255), nullable=True, unique=True),
    # sha-256 of the request body the key was first used with.
    Column("request_fingerprint", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)


def _to_order(row: Row[Any]) -> Order:
    return Order(
        order_id=uuid.UUID(row.order_id), payment_id=uuid.UUID(row.payment_id),
        customer_id=row.customer_id, email=row.email, amount=row.amount, currency=row.currency,
        status=PaymentStatus(row.status), correlation_id=row.correlation_id,
        sequence=row.sequence,
    )


Executor = AsyncSession | Statements  # a session, or the connection of a group commit

# ON CONFLICT DO NOTHING (SQLite and PostgreSQL spell it alike): a payment whose order or key
# is taken writes nothing and raises nothing, so it cannot abort the transaction it shares
# with others. Written as text, with the columns' types for its parameters: SQLAlchemy's
# dialect `insert().on_conflict_do_nothing()` has no cache key, so it was compiled again for
# every payment (docs/performance.md); a text statement is compiled once.
_COLUMNS = [column.name for column in payments.columns]
_ADD = text(
    f"INSERT INTO payments ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(':' + name for name in _COLUMNS)}) ON CONFLICT DO NOTHING"
).bindparams(*(bindparam(column.name, type_=column.type) for column in payments.columns))


async def add(
    conn: Executor, order: Order, *, idempotency_key: str | None,
    request_fingerprint: str | None,
) -> bool:
    """Insert the new payment; False (nothing written) if its order or its idempotency key
    already has one (committed, or earlier in this transaction)."""
    now = utcnow()
    result = cast("CursorResult[Any]", await conn.execute(_ADD, {
        "payment_id": str(order.payment_id), "order_id": str(order.order_id),
        "customer_id": order.customer_id, "email": order.email, "amount": order.amount,
        "currency": order.currency, "status": order.status.value,
        "correlation_id": order.correlation_id, "sequence": order.sequence,
        "idempotency_key": idempotency_key, "request_fingerprint": request_fingerprint,
        "created_at": now, "updated_at": now,
    }))
    return result.rowcount == 1


class ConcurrentChange(Exception):
    """The order changed since it was read (e.g. two refunds at once); nothing was written."""


async def save(session: Executor, order: Order, *, read_sequence: int) -> None:
    """Write the order's new state, only if it is still at `read_sequence` (optimistic lock).

    Two concurrent refunds both read "paid"; without the condition both would commit and
    publish two OrderRefunded events with sequence 2.
    """
    result = cast("CursorResult[Any]", await session.execute(
        update(payments)
        .where(payments.c.payment_id == str(order.payment_id),
               payments.c.sequence == read_sequence)
        .values(status=order.status.value, sequence=order.sequence, updated_at=utcnow())
    ))
    if result.rowcount != 1:
        raise ConcurrentChange(f"payment {order.payment_id} changed concurrently")


async def get(session: Executor, payment_id: uuid.UUID) -> Order | None:
    row = (
        await session.execute(select(payments).where(payments.c.payment_id == str(payment_id)))
    ).first()
    return _to_order(row) if row else None


async def get_by_order(session: Executor, order_id: uuid.UUID) -> Order | None:
    row = (
        await session.execute(select(payments).where(payments.c.order_id == str(order_id)))
    ).first()
    return _to_order(row) if row else None


async def get_by_idempotency_key(session: Executor, key: str) -> tuple[Order, str] | None:
    """The payment first made with `key`, and the fingerprint of that first request."""
    row = (
        await session.execute(select(payments).where(payments.c.idempotency_key == key))
    ).first()
    return (_to_order(row), row.request_fingerprint) if row else None
