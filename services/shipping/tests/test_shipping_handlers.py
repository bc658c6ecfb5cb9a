"""Shipping's handlers run in memory through its spec and real inbox (messaging.testing):
what it ships and what it stages in its outbox, without RabbitMQ, in milliseconds. The same
on real SQLite and PostgreSQL files is test_shipping.py."""

from __future__ import annotations

import pytest

from contracts import OrderShipped
from devstack import events
from messaging.inbox import Outcome, OutOfOrder
from messaging.testing.service import InMemoryService
from shipping.handlers import NoShipment
from shipping.settings import Settings
from shipping.spec import SPEC

pytestmark = pytest.mark.unit


def shipping() -> InMemoryService:
    return InMemoryService(SPEC, Settings(carrier="Test Post"))


async def test_a_paid_order_ships_once_and_stages_one_order_shipped():
    paid = events.order_paid()
    async with shipping() as service:
        assert await service.deliver(paid) is Outcome.APPLIED
        assert await service.deliver(paid) is Outcome.DUPLICATE
        [shipment] = await service.rows("shipments")
        [shipped] = service.staged
    assert (shipment["order_id"], shipment["status"], shipment["carrier"]) == (
        str(paid.order_id), "shipped", "Test Post")
    assert isinstance(shipped, OrderShipped)
    assert (shipped.order_id, shipped.sequence, shipped.correlation_id) == (
        paid.order_id, 1, paid.correlation_id)
    assert shipped.data.tracking_number == shipment["tracking_number"]


async def test_a_refund_asks_for_the_return_and_stages_nothing():
    paid = events.order_paid()
    async with shipping() as service:
        await service.deliver(paid)
        assert await service.deliver(events.order_refunded(paid)) is Outcome.APPLIED
        [shipment] = await service.rows("shipments")
        assert shipment["status"] == "return_requested"
        assert len(service.staged) == 1  # the OrderShipped of the payment only


async def test_a_refund_before_its_payment_waits_and_ships_nothing():
    paid = events.order_paid()
    async with shipping() as service:
        with pytest.raises(OutOfOrder):
            await service.deliver(events.order_refunded(paid))
        assert await service.rows("shipments") == [] and service.staged == []


async def test_a_refund_of_an_order_never_shipped_fails_and_leaves_nothing():
    refund = events.order_refunded(events.order_paid()).model_copy(update={"sequence": 1})
    async with shipping() as service:
        with pytest.raises(NoShipment):
            await service.deliver(refund)
        assert service.applied == [] and await service.rows("shipments") == []


async def test_shipping_is_not_bound_to_its_own_order_shipped():
    async with shipping() as service:
        assert await service.deliver(events.order_shipped(events.order_paid())) is None
