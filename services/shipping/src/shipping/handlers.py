"""What shipping does with an event. Knows no transport: the RabbitMQ consumer calls it in
the normal deployment, the in-process dispatcher in the synchronous mode.

On OrderPaid it ships: the shipment row and the OrderShipped event (into shipping's own
outbox) are written in the inbox transaction of the OrderPaid, so the three commit together
or not at all: a crash can neither lose the OrderShipped nor send a second one (the relay
may publish it twice; its consumers' inboxes take it once). Ids are derived from the order
and the OrderPaid, so a re-run of the handler (a rolled-back batch) writes the same ones.
"""

from __future__ import annotations

import uuid

from contracts import OrderPaid, OrderRefunded, OrderShipped, ShipmentData, utcnow
from messaging.chassis.db import Statements
from messaging.outbox_store import add_to_outbox
from shipping import store

_IDS = uuid.UUID("6f1d4c1e-5b0e-4d55-9a51-6b3c0f6e2a10")  # namespace of shipping's uuid5 ids


class NoShipment(LookupError):
    """A refund for an order shipping never shipped (its OrderPaid comes first, by order)."""


def shipment_id_for(order_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_IDS, f"shipment:{order_id}")


def tracking_number_for(shipment_id: uuid.UUID) -> str:
    return f"MP{shipment_id.int % 10**12:012d}"


def order_shipped(paid: OrderPaid, carrier: str) -> OrderShipped:
    shipment_id = shipment_id_for(paid.order_id)
    return OrderShipped(
        event_id=uuid.uuid5(_IDS, f"shipped:{paid.event_id}"),
        occurred_at=utcnow(),
        correlation_id=paid.correlation_id,  # the payment's correlation travels on
        order_id=paid.order_id,
        sequence=1,  # the first event of the order's shipment stream
        data=ShipmentData(shipment_id=shipment_id, customer_id=paid.data.customer_id,
                          email=paid.data.email, carrier=carrier,
                          tracking_number=tracking_number_for(shipment_id)),
    )


async def ship(event: OrderPaid, conn: Statements, *, carrier: str) -> None:
    shipped = order_shipped(event, carrier)
    await store.add(
        conn, shipment_id=str(shipped.data.shipment_id), order_id=str(event.order_id),
        customer_id=event.data.customer_id, email=event.data.email, status=store.SHIPPED,
        carrier=carrier, tracking_number=shipped.data.tracking_number,
        shipped_at=shipped.occurred_at, updated_at=shipped.occurred_at,
    )
    await add_to_outbox(conn, shipped)


async def request_return(event: OrderRefunded, conn: Statements) -> None:
    if not await store.set_status(conn, str(event.order_id), store.RETURN_REQUESTED,
                                  utcnow()):
        raise NoShipment(f"order {event.order_id} has no shipment to return")
