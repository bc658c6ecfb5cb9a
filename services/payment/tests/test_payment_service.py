"""Payment use cases against real SQLite and PostgreSQL: state and outbox commit together."""

import asyncio
import logging
import uuid

import pytest
from sqlalchemy import func, select

from contracts import read_event
from messaging import outbox_store
from messaging.outbox_store import outbox_table
from messaging.speed.transactions import unit_of_work
from payment import store
from payment.domain import NotRefundable
from payment.handlers import (
    IdempotencyKeyReused,
    OrderAlreadyPaid,
    PayCommand,
    PaymentNotFound,
    PaymentService,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(store.metadata, outbox_store.metadata)


@pytest.fixture
def committed():
    return []


@pytest.fixture
async def payments(sessions, committed, speed_layer):
    async def remember(events):
        committed.extend(events)

    transactions = unit_of_work(sessions, speed=speed_layer == "on", events_committed=remember)
    yield PaymentService(transactions)
    await transactions.close()


def command(key: str | None = None, **changes) -> PayCommand:
    fields = dict(order_id=uuid.uuid4(), customer_id="alice", email="alice@example.com",
                  amount=1200, currency="JPY", correlation_id=str(uuid.uuid4()),
                  idempotency_key=key)
    return PayCommand(**(fields | changes))


async def outbox_events(sessions) -> list:
    async with sessions() as session:
        bodies = (await session.execute(select(outbox_table.c.body).order_by(outbox_table.c.id)))
        return [read_event(body.encode()) for body in bodies.scalars()]  # as published


async def test_paying_writes_the_payment_and_its_order_paid_event_together(
    payments, sessions, committed
):
    cmd = command()
    order, replayed = await payments.pay(cmd)

    assert not replayed
    assert (await payments.get(order.payment_id)).status == "paid"
    [event] = await outbox_events(sessions)
    assert event.event_type == "OrderPaid" and event.order_id == cmd.order_id
    assert event.correlation_id == cmd.correlation_id and event.sequence == 1
    assert committed == [event]


async def test_the_same_idempotency_key_and_body_returns_the_same_payment_and_stages_nothing(
    payments, sessions
):
    cmd = command(key="key-1")
    first, _ = await payments.pay(cmd)
    again, replayed = await payments.pay(cmd)

    assert replayed and again.payment_id == first.payment_id
    assert len(await outbox_events(sessions)) == 1


async def test_the_same_idempotency_key_with_another_body_is_refused(payments, sessions):
    cmd = command(key="key-2")
    await payments.pay(cmd)
    with pytest.raises(IdempotencyKeyReused):
        await payments.pay(command(key="key-2", order_id=cmd.order_id, amount=999))
    assert len(await outbox_events(sessions)) == 1


async def test_an_order_is_paid_only_once(payments, sessions):
    cmd = command()
    await payments.pay(cmd)
    with pytest.raises(OrderAlreadyPaid):
        await payments.pay(command(order_id=cmd.order_id))
    assert len(await outbox_events(sessions)) == 1


async def test_concurrent_payments_of_one_order_make_one_payment(payments, sessions):
    order_id = uuid.uuid4()
    results = await asyncio.gather(
        *(payments.pay(command(order_id=order_id)) for _ in range(5)), return_exceptions=True
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, OrderAlreadyPaid)]
    assert len(made) == 1 and len(refused) == 4
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(store.payments)) == 1
    assert len(await outbox_events(sessions)) == 1


async def test_refunding_stages_order_refunded_as_sequence_two(payments, sessions):
    order, _ = await payments.pay(command())
    refunded = await payments.refund(order.payment_id)

    assert refunded.status == "refunded"
    assert (await payments.get(order.payment_id)).status == "refunded"
    paid_event, refund_event = await outbox_events(sessions)
    assert (refund_event.event_type, refund_event.sequence) == ("OrderRefunded", 2)
    assert refund_event.correlation_id == paid_event.correlation_id


async def test_a_second_refund_is_refused_and_stages_nothing(payments, sessions):
    order, _ = await payments.pay(command())
    await payments.refund(order.payment_id)
    with pytest.raises(NotRefundable):
        await payments.refund(order.payment_id)
    assert len(await outbox_events(sessions)) == 2


async def test_an_unknown_payment_is_not_found(payments):
    with pytest.raises(PaymentNotFound):
        await payments.get(uuid.uuid4())
    with pytest.raises(PaymentNotFound):
        await payments.refund(uuid.uuid4())


async def test_a_payments_statements_are_compiled_once_and_then_found_in_the_cache(
    payments, caplog
):
    """SQLAlchemy logs each statement's cache use: "[generated …]" for the first compile,
    "[cached since …]" after, "[no key …]" for a statement it can never cache (compiled
    again every time; docs/performance.md)."""
    # Logged from the first payment on: a connection decides whether it logs when it is made.
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
        await payments.pay(command())  # warm: each statement compiled here once
        caplog.clear()
        await asyncio.gather(*(payments.pay(command()) for _ in range(5)))
    uses = [r.getMessage().split(" ", 1)[0] for r in caplog.records
            if r.getMessage().startswith("[")]
    assert uses, "no statement was logged"
    assert {use for use in uses if use not in ("[cached", "[raw")} == set(), uses
