"""Valid events for tests and tools, with random ids unless told otherwise."""

from __future__ import annotations

import uuid

from contracts import OrderPaid, OrderRefunded, OrderShipped, PaymentData, ShipmentData, utcnow


def order_paid(*, order_id: uuid.UUID | None = None, customer_id: str = "alice",
               amount: int = 1200, correlation_id: str | None = None) -> OrderPaid:
    return OrderPaid(
        event_id=uuid.uuid4(), occurred_at=utcnow(),
        correlation_id=correlation_id or str(uuid.uuid4()),
        order_id=order_id or uuid.uuid4(), sequence=1,
        data=PaymentData(payment_id=uuid.uuid4(), customer_id=customer_id,
                           email=f"{customer_id}@example.com", amount=amount, currency="JPY"),
    )


def order_refunded(paid: OrderPaid) -> OrderRefunded:
    return OrderRefunded(
        event_id=uuid.uuid4(), occurred_at=utcnow(), correlation_id=paid.correlation_id,
        order_id=paid.order_id, sequence=2,
        data=paid.data,
    )


def order_shipped(paid: OrderPaid) -> OrderShipped:
    """What shipping publishes for `paid`: the first event of the order's shipment stream."""
    return OrderShipped(
        event_id=uuid.uuid4(), occurred_at=utcnow(), correlation_id=paid.correlation_id,
        order_id=paid.order_id, sequence=1,
        data=ShipmentData(shipment_id=uuid.uuid4(), customer_id=paid.data.customer_id,
                          email=paid.data.email, carrier="Mini Post",
                          tracking_number=f"MP{paid.order_id.hex[:12].upper()}"),
    )
