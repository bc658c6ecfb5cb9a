"""Upcasting: an event of an older version becomes the current version as it is read, so
handlers see one shape (docs/evolution.md, "The upcaster").

One pure function per step (version N to N + 1), registered in UPCASTERS by the model it
takes. `upcast` applies the steps until the event is current. A step reshapes what the older
version says and invents nothing; fields it does not know (a tolerant reader keeps them) go
along untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts import EVENT_TYPES, Event, OrderPaid, OrderPaidV1, WireEvent


def order_paid_v1_to_v2(event: OrderPaidV1) -> OrderPaid:
    """`amount` and `currency`, two fields of version 1's data, become version 2's Money."""
    old = event.data
    data = {"payment_id": old.payment_id, "customer_id": old.customer_id, "email": old.email,
            "amount": {"value": old.amount, "currency": old.currency},
            **(old.model_extra or {})}
    return OrderPaid.model_validate(
        {"event_id": event.event_id, "event_type": event.event_type, "version": 2,
         "occurred_at": event.occurred_at, "correlation_id": event.correlation_id,
         "order_id": event.order_id, "sequence": event.sequence, "data": data,
         **(event.model_extra or {})},
        extra="allow")


# The step that takes each older version one version up.
UPCASTERS: dict[type[Any], Callable[[Any], WireEvent]] = {
    OrderPaidV1: order_paid_v1_to_v2,
}


def upcast(event: WireEvent) -> Event:
    """The event in its type's current version (itself when it is current)."""
    while type(event) is not EVENT_TYPES[event.event_type]:
        step = UPCASTERS.get(type(event))
        if step is None:
            raise LookupError(f"no upcaster from {type(event).__name__} "
                              f"(version {event.version} of {event.event_type})")
        event = step(event)
    return event  # the loop ends on the current model
