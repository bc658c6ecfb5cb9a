"""Shipping's effects, through its inbox, on real SQLite and PostgreSQL: one shipment per paid
order and its OrderShipped in shipping's own outbox, committed together or not at all."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from contracts import OrderShipped, parse_event
from devstack import events
from messaging import inbox, outbox_store
from messaging.inbox import Inbox, Outcome, OutOfOrder
from shipping import api, store
from shipping.handlers import NoShipment
from shipping.settings import Settings
from shipping.spec import SPEC

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(store.metadata, inbox.metadata, outbox_store.metadata)


@pytest.fixture
def subscriptions():
    assert SPEC.consumes is not None
    return SPEC.consumes.registry(Settings(carrier="Test Post"))


async def shipments(sessions) -> list[dict]:
    async with sessions() as session:
        return [dict(r) for r in (await session.execute(select(store.shipments))).mappings()]


async def staged(sessions) -> list[OrderShipped]:
    async with sessions() as session:
        bodies = (await session.execute(select(outbox_store.outbox_table.c.body))).scalars()
        return [parse_event(body.encode()) for body in bodies]  # type: ignore[misc]  # parse_event is typed as the union


async def test_a_paid_order_gets_one_shipment_and_one_order_shipped_in_the_outbox(
    sessions, subscriptions
):
    paid = events.order_paid()
    assert await Inbox(sessions).process(paid, subscriptions) is Outcome.APPLIED

    [shipment] = await shipments(sessions)
    [shipped] = await staged(sessions)
    assert (shipment["order_id"], shipment["status"], shipment["carrier"]) == (
        str(paid.order_id), "shipped", "Test Post")
    assert isinstance(shipped, OrderShipped)
    assert (shipped.order_id, shipped.sequence, shipped.correlation_id) == (
        paid.order_id, 1, paid.correlation_id)
    assert str(shipped.data.shipment_id) == shipment["shipment_id"]
    assert shipped.data.tracking_number == shipment["tracking_number"]
    assert (shipped.data.customer_id, shipped.data.email) == (paid.data.customer_id,
                                                            paid.data.email)


async def test_a_redelivered_payment_ships_nothing_more(sessions, subscriptions):
    box, paid = Inbox(sessions), events.order_paid()
    await box.process(paid, subscriptions)
    assert await box.process(paid, subscriptions) is Outcome.DUPLICATE
    assert len(await shipments(sessions)) == 1 and len(await staged(sessions)) == 1


async def test_a_rolled_back_batch_leaves_neither_shipment_nor_event(sessions, subscriptions):
    """The shipment, its OrderShipped and the inbox record are one transaction: another
    event of the batch failing takes all three back."""
    paid = events.order_paid()
    refund_of_nothing = events.order_refunded(events.order_paid()).model_copy(
        update={"sequence": 1})  # no shipment to return: the handler raises
    with pytest.raises(NoShipment):
        await Inbox(sessions).process_batch([paid, refund_of_nothing], subscriptions)
    assert await shipments(sessions) == [] and await staged(sessions) == []
    assert not await Inbox(sessions).seen(str(paid.event_id))


async def test_a_refund_asks_for_the_return_after_the_shipment_whatever_the_delivery_order(
    sessions, subscriptions
):
    box, paid = Inbox(sessions), events.order_paid()
    refunded = events.order_refunded(paid)
    with pytest.raises(OutOfOrder):
        await box.process(refunded, subscriptions)  # before its payment: waits
    await box.process(paid, subscriptions)
    assert await box.process(refunded, subscriptions) is Outcome.APPLIED
    [shipment] = await shipments(sessions)
    assert shipment["status"] == "return_requested"
    assert len(await staged(sessions)) == 1  # the refund publishes nothing


async def test_get_shipments_by_order(sessions, subscriptions):
    paid = events.order_paid()
    await Inbox(sessions).process(paid, subscriptions)
    app = FastAPI()
    app.include_router(api.router(sessions))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://shipping") as client:
        found = (await client.get("/shipments", params={"order_id": str(paid.order_id)})).json()
        other = await client.get("/shipments", params={"order_id": str(events.order_paid()
                                                                        .order_id)})
        bad = await client.get("/shipments", params={"order_id": "not-a-uuid"})
    [shipment] = found
    assert set(shipment) == {"shipment_id", "order_id", "status", "carrier", "tracking_number",
                             "shipped_at"}
    assert (shipment["order_id"], shipment["status"]) == (str(paid.order_id), "shipped")
    assert other.json() == []
    assert bad.status_code == 422
