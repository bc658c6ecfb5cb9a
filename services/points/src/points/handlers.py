"""What points does with an event. Knows no transport: called by the RabbitMQ consumer in
the normal deployment, by the in-process dispatcher in the synchronous mode. Which handler
takes which event type is in points/spec.py."""

from __future__ import annotations

from contracts import OrderPaid, OrderRefunded
from messaging.chassis.db import Statements
from points import store


def points_for(amount: int) -> int:
    """One point per 100 minor units paid."""
    return amount // 100


async def grant_points(event: OrderPaid, conn: Statements) -> None:
    await store.add_entry(
        conn,
        customer_id=event.data.customer_id,
        order_id=str(event.order_id),
        event_id=str(event.event_id),
        delta=points_for(event.data.amount.value),
        reason="order paid",
        at=event.occurred_at,
    )


async def revoke_points(event: OrderRefunded, conn: Statements) -> None:
    """Take back exactly what the order was granted, so a balance never goes below zero."""
    granted = await store.order_total(conn, str(event.order_id))
    await store.add_entry(
        conn,
        customer_id=event.data.customer_id,
        order_id=str(event.order_id),
        event_id=str(event.event_id),
        delta=-granted,
        reason="order refunded",
        at=event.occurred_at,
    )
