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

import orjson

from contracts import EVENT_TYPES, Event, OrderPaid, OrderPaidV1, WireEvent


def order_paid_v1_to_v2(event: OrderPaidV1) -> OrderPaid:
    """`amount` and `currency`, two fields of version 1's data, become version 2's Money."""
    body = orjson.loads(event.to_json())  # unknown fields included
    data = body["data"]
    data["amount"] = {"value": data.pop("amount"), "currency": data.pop("currency")}
    body["version"] = 2
    return OrderPaid.model_validate(body, extra="allow")


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
