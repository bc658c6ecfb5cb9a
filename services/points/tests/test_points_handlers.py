"""Points' handlers run in memory through its spec and real inbox (messaging.testing): no
RabbitMQ, milliseconds. The same path through the real consumer and broker is
test_events_in_order.py."""

from __future__ import annotations

import pytest

from devstack import events
from messaging.inbox import Outcome, OutOfOrder
from messaging.testing.service import InMemoryService
from points import store
from points.spec import SPEC

pytestmark = pytest.mark.unit


async def ledger_of(points: InMemoryService, customer: str) -> list[int]:
    async with points.sessions() as session:
        return [e["delta"] for e in await store.customer_entries(session, customer)]


async def test_a_paid_order_grants_its_points_once_however_often_it_is_delivered():
    paid = events.order_paid(customer_id="carol", amount=1299)
    async with InMemoryService(SPEC) as points:
        assert await points.deliver(paid) is Outcome.APPLIED
        assert await points.deliver(paid) is Outcome.DUPLICATE
        assert await ledger_of(points, "carol") == [12]


async def test_a_refund_takes_back_exactly_what_the_order_was_granted():
    paid = events.order_paid(customer_id="dave", amount=1200)
    async with InMemoryService(SPEC) as points:
        await points.deliver(paid)
        assert await points.deliver(events.order_refunded(paid)) is Outcome.APPLIED
        assert await ledger_of(points, "dave") == [12, -12]


async def test_a_refund_before_its_payment_waits_so_a_balance_never_goes_negative():
    paid = events.order_paid(customer_id="erin", amount=1200)
    refund = events.order_refunded(paid)
    async with InMemoryService(SPEC) as points:
        with pytest.raises(OutOfOrder, match="waits for #1"):
            await points.deliver(refund)
        assert await ledger_of(points, "erin") == []
        await points.deliver(paid)
        assert await points.deliver(refund) is Outcome.APPLIED
        assert await ledger_of(points, "erin") == [12, -12]


async def test_a_version_1_payment_is_upcast_and_granted_as_version_2():
    paid = events.order_paid_v1(customer_id="frank", amount=500)
    async with InMemoryService(SPEC) as points:
        assert await points.deliver(paid) is Outcome.APPLIED
        assert await ledger_of(points, "frank") == [5]


async def test_a_shipment_reaches_points_by_its_binding_and_is_ignored():
    async with InMemoryService(SPEC) as points:
        shipped = events.order_shipped(events.order_paid())
        assert await points.deliver(shipped) is Outcome.IGNORED
        assert points.applied == [] and points.staged == []
