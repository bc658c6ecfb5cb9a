"""Valid events for tests and tools, with random ids unless told otherwise."""

from __future__ import annotations

import uuid

from contracts import (
    Money,
    OrderPaid,
    OrderPaidV1,
    OrderRefunded,
    OrderShipped,
    PaymentData,
    PaymentDataV2,
    ShipmentData,
    utcnow,
)


def order_paid(*, order_id: uuid.UUID | None = None, customer_id: str = "alice",
               amount: int = 1200, correlation_id: str | None = None) -> OrderPaid:
    """OrderPaid in its current version (2)."""
    return OrderPaid(
        event_id=uuid.uuid4(), occurred_at=utcnow(),
        correlation_id=correlation_id or str(uuid.uuid4()),
        order_id=order_id or uuid.uuid4(), sequence=1,
        data=PaymentDataV2(payment_id=uuid.uuid4(), customer_id=customer_id,
                           email=f"{customer_id}@example.com",
                           amount=Money(value=amount, currency="JPY")),
    )


def order_paid_v1(**kwargs: object) -> OrderPaidV1:
    """`order_paid`, as version 1 says it (what payment publishes with ORDER_PAID_VERSION=1)."""
    paid = order_paid(**kwargs)  # type: ignore[arg-type]  # order_paid's keywords
    return OrderPaidV1(**{**dict(paid), "version": 1, "data": payment_data(paid)})


def payment_data(paid: OrderPaid) -> PaymentData:
    """The payment of `paid` as version 1 and OrderRefunded carry it."""
    data = paid.data
    return PaymentData(payment_id=data.payment_id, customer_id=data.customer_id,
                       email=data.email, amount=data.amount.value, currency=data.amount.currency)


def order_refunded(paid: OrderPaid | OrderPaidV1) -> OrderRefunded:
    return OrderRefunded(
        event_id=uuid.uuid4(), occurred_at=utcnow(), correlation_id=paid.correlation_id,
        order_id=paid.order_id, sequence=2,
        data=paid.data if isinstance(paid, OrderPaidV1) else payment_data(paid),
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
