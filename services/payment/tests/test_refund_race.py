"""Two refunds of one payment at the same moment: one wins, one is refused, one event staged."""

import asyncio
import uuid

import pytest
from sqlalchemy import select

from contracts import utcnow
from messaging import outbox_store
from messaging.outbox_store import outbox_table
from messaging.transactions import Transactions
from payment import store
from payment.domain import NotRefundable
from payment.handlers import PayCommand, PaymentService

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(store.metadata, outbox_store.metadata)


async def test_concurrent_refunds_stage_exactly_one_order_refunded(sessions):
    payments = PaymentService(Transactions(sessions))
    order, _ = await payments.pay(PayCommand(
        order_id=uuid.uuid4(), customer_id="alice", email="alice@example.com", amount=1200,
        currency="JPY", correlation_id=str(uuid.uuid4())))

    results = await asyncio.gather(
        *(payments.refund(order.payment_id) for _ in range(4)), return_exceptions=True
    )

    refused = [r for r in results if isinstance(r, NotRefundable)]
    assert len(refused) == 3, results
    async with sessions() as session:
        types = (await session.execute(
            select(outbox_table.c.event_type)
            .where(outbox_table.c.order_id == str(order.order_id)))).scalars().all()
    assert sorted(types) == ["OrderPaid", "OrderRefunded"]
    assert (await payments.get(order.payment_id)).status == "refunded"


async def test_saving_an_order_that_changed_since_it_was_read_writes_nothing(sessions):
    payments = PaymentService(Transactions(sessions))
    order, _ = await payments.pay(PayCommand(
        order_id=uuid.uuid4(), customer_id="bob", email="bob@example.com", amount=500,
        currency="JPY", correlation_id=str(uuid.uuid4())))
    order.refund(now=utcnow())
    with pytest.raises(store.ConcurrentChange):
        async with sessions() as session, session.begin():
            await store.save(session, order, read_sequence=order.sequence)  # not what's stored
    assert (await payments.get(order.payment_id)).status == "paid"
