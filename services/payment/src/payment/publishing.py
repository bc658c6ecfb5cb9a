"""Which version of its events payment publishes: the setting ORDER_PAID_VERSION picks
OrderPaid's (docs/evolution.md, "The deploy order"). The aggregate records the current
version; while consumers that read only version 1 may still run, payment sends version 1.
A pure function per version it can still send."""

from __future__ import annotations

from contracts import Event, OrderPaid, OrderPaidV1, PaymentData, WireEvent

# The OrderPaid versions payment can publish (its spec says so; ORDER_PAID_VERSION picks one).
ORDER_PAID_VERSIONS = (1, 2)


def order_paid_v2_to_v1(event: OrderPaid) -> OrderPaidV1:
    """Version 2 as version 1 says it: Money back into `amount` and `currency`. Nothing is
    lost: version 2 adds no information, it only puts the two together."""
    data = event.data
    return OrderPaidV1(
        event_id=event.event_id, occurred_at=event.occurred_at,
        correlation_id=event.correlation_id, order_id=event.order_id,
        sequence=event.sequence,
        data=PaymentData(payment_id=data.payment_id, customer_id=data.customer_id,
                         email=data.email, amount=data.amount.value,
                         currency=data.amount.currency),
    )


def as_published(event: Event, order_paid_version: int) -> WireEvent:
    """`event` in the version payment publishes it in."""
    if isinstance(event, OrderPaid) and order_paid_version == 1:
        return order_paid_v2_to_v1(event)
    return event
