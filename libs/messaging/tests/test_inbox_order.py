"""The inbox's ordering and dedupe rules, on real SQLite and PostgreSQL.

Per order: sequence n is applied only after n-1; anything at or below what was applied is
skipped (duplicate if the same event id, stale otherwise); the effect and its record commit
together, so a handler that fails leaves no trace.
"""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from contracts import OrderPaid, utcnow
from devstack import events
from messaging import inbox
from messaging.inbox import (
    Conflict,
    Inbox,
    Outcome,
    OutOfOrder,
    inbox_table,
    order_progress_table,
)
from messaging.spec import Subscription, Subscriptions, every

pytestmark = pytest.mark.integration

effects_metadata = MetaData()
effects = Table(
    "effects", effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("order_id", String(36), nullable=False),
)


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(effects_metadata, inbox.metadata)


@pytest.fixture
def box(sessions, inbox_for) -> Inbox:
    return inbox_for(sessions)


async def record(event, session) -> None:
    await session.execute(
        insert(effects).values(event_id=str(event.event_id), order_id=str(event.order_id))
    )


async def effects_of(sessions, order_id) -> list[str]:
    async with sessions() as session:
        rows = await session.execute(
            select(effects.c.event_id).where(effects.c.order_id == str(order_id))
            .order_by(effects.c.id)
        )
        return list(rows.scalars())


async def test_events_in_order_are_applied_in_order(box, sessions):
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    assert await box.process(paid, every(record)) is Outcome.APPLIED
    assert await box.process(refunded, every(record)) is Outcome.APPLIED
    assert await effects_of(sessions, paid.order_id) == [str(paid.event_id),
                                                         str(refunded.event_id)]


async def test_an_event_before_its_predecessor_is_refused_without_an_effect(box, sessions):
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    with pytest.raises(OutOfOrder, match="waits for #1"):
        await box.process(refunded, every(record))
    assert await effects_of(sessions, paid.order_id) == []
    assert not await box.seen(str(refunded.event_id))
    # Once the predecessor is applied, the deferred event goes through.
    assert await box.process(paid, every(record)) is Outcome.APPLIED
    assert await box.process(refunded, every(record)) is Outcome.APPLIED


async def test_the_same_event_again_is_a_duplicate_with_no_second_effect(box, sessions):
    paid = events.order_paid()
    assert await box.process(paid, every(record)) is Outcome.APPLIED
    assert await box.process(paid, every(record)) is Outcome.DUPLICATE
    assert await effects_of(sessions, paid.order_id) == [str(paid.event_id)]


async def test_another_event_claiming_an_applied_place_is_a_conflict_not_stale(box, sessions):
    """Issue 17: it used to be skipped as stale, silently; it names the event holding #1."""
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    await box.process(paid, every(record))
    await box.process(refunded, every(record))
    # Another event claiming sequence 1 of the same order (e.g. re-created upstream).
    other_first = paid.model_copy(update={"event_id": events.order_paid().event_id})
    with pytest.raises(Conflict, match=str(paid.event_id)):
        await box.process(other_first, every(record))
    assert len(await effects_of(sessions, paid.order_id)) == 2


async def test_a_failing_handler_leaves_neither_effect_nor_inbox_record(box, sessions):
    paid = events.order_paid()

    async def half_then_fail(event, session):
        await record(event, session)
        raise ConnectionError("mail server went away")

    with pytest.raises(ConnectionError):
        await box.process(paid, every(half_then_fail))
    assert await effects_of(sessions, paid.order_id) == []
    assert not await box.seen(str(paid.event_id))
    assert await box.process(paid, every(record)) is Outcome.APPLIED


async def test_orders_are_independent_of_each_other(box, sessions):
    first, second = events.order_paid(), events.order_paid()
    assert await box.process(second, every(record)) is Outcome.APPLIED
    assert await box.process(first, every(record)) is Outcome.APPLIED


async def test_the_same_event_processed_concurrently_is_applied_once(box, sessions):
    """Two competing consumers got the same event (published twice): one effect."""
    paid = events.order_paid()
    started = asyncio.Event()

    async def slow_record(event, session):
        await record(event, session)
        started.set()
        await asyncio.sleep(0.2)  # widen the race: both are inside their transactions

    outcomes = await asyncio.gather(box.process(paid, every(slow_record)),
                                    box.process(paid, every(slow_record)))
    assert sorted(outcomes) == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert await effects_of(sessions, paid.order_id) == [str(paid.event_id)]


async def test_two_events_with_the_same_sequence_at_once_apply_only_one(box, sessions):
    """Two different events both claiming #2 of one order race: the loser is a conflict."""
    paid = events.order_paid()
    await box.process(paid, every(record))
    one, other = events.order_refunded(paid), events.order_refunded(paid)

    async def slow_record(event, session):
        await record(event, session)
        await asyncio.sleep(0.2)

    outcomes = await asyncio.gather(box.process(one, every(slow_record)),
                                    box.process(other, every(slow_record)),
                                    return_exceptions=True)
    assert Outcome.APPLIED in outcomes
    [lost] = [o for o in outcomes if o is not Outcome.APPLIED]
    assert isinstance(lost, Conflict)
    assert len(await effects_of(sessions, paid.order_id)) == 2  # paid + one refund
    async with sessions() as session:
        progress = await session.scalar(
            select(order_progress_table.c.last_sequence)
            .where(order_progress_table.c.order_id == str(paid.order_id)))
    assert progress == 2


async def test_forgetting_removes_only_inbox_records_older_than_the_retention(box, sessions):
    old, recent = events.order_paid(), events.order_paid()
    await box.process(old, every(record))
    await box.process(recent, every(record))
    async with sessions() as session, session.begin():
        await session.execute(
            inbox_table.update().where(inbox_table.c.event_id == str(old.event_id))
            .values(processed_at=utcnow() - timedelta(hours=48))
        )
    assert await box.forget_older_than(timedelta(hours=24)) == 1
    assert not await box.seen(str(old.event_id))
    assert await box.seen(str(recent.event_id))
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(inbox_table)) == 1


async def test_a_duplicate_after_the_retention_is_still_skipped_as_stale(box, sessions):
    """The inbox forgot the event id, but the order's applied sequence still refuses it."""
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    for event in (paid, refunded):
        await box.process(event, every(record))
    later = utcnow() + timedelta(days=30)
    assert await box.forget_older_than(timedelta(days=7), now=later) == 2
    assert not await box.seen(str(paid.event_id))

    assert await box.process(paid, every(record)) is Outcome.STALE
    assert await box.process(refunded, every(record)) is Outcome.STALE
    assert len(await effects_of(sessions, paid.order_id)) == 2


async def test_forgetting_works_through_any_number_of_records_in_small_batches(box):
    olds = [events.order_paid() for _ in range(5)]
    for event in olds:
        await box.process(event, every(record))
    later = utcnow() + timedelta(days=30)
    assert await box.forget_older_than(timedelta(days=7), now=later, batch=2) == 5
    assert not any([await box.seen(str(e.event_id)) for e in olds])


async def test_an_event_type_without_a_subscription_is_ignored_and_leaves_no_trace(box, sessions):
    """Not recorded, not ordered: an unhandled type can never be deferred or dead-lettered
    as out of order, and never holds back or moves the order's progress."""
    paid_only = Subscriptions([Subscription(OrderPaid, record)])
    paid = events.order_paid()
    refunded = events.order_refunded(paid)

    assert await box.process(refunded, paid_only) is Outcome.IGNORED  # before its #1
    assert await box.process(paid, paid_only) is Outcome.APPLIED
    assert await box.process(refunded, paid_only) is Outcome.IGNORED
    assert not await box.seen(str(refunded.event_id))
    assert await box.process_batch([refunded, refunded], paid_only) == [Outcome.IGNORED] * 2
    async with sessions() as session:
        rows = (await session.execute(select(order_progress_table))).all()
    assert [(r.stream, r.last_sequence) for r in rows] == [("payment", 1)]


async def test_with_two_producers_late_duplicates_past_the_retention_are_still_stale(
    box, sessions
):
    """Payment's stream and shipping's are kept apart: after the inbox forgot all three
    ids, each comes back stale against its own stream, none applied again."""
    paid = events.order_paid()
    shipped, refunded = events.order_shipped(paid), events.order_refunded(paid)
    for event in (paid, refunded, shipped):  # the refund before the shipment: independent
        assert await box.process(event, every(record)) is Outcome.APPLIED
    later = utcnow() + timedelta(days=30)
    assert await box.forget_older_than(timedelta(days=7), now=later) == 3

    for event in (shipped, paid, refunded):
        assert await box.process(event, every(record)) is Outcome.STALE
    assert len(await effects_of(sessions, paid.order_id)) == 3
    async with sessions() as session:
        rows = (await session.execute(select(order_progress_table))).all()
    assert sorted((r.stream, r.last_sequence) for r in rows) == [("payment", 2), ("shipment", 1)]


async def test_a_shipment_before_its_payment_waits_and_a_refund_does_not_wait_for_it(box):
    paid = events.order_paid()
    shipped, refunded = events.order_shipped(paid), events.order_refunded(paid)
    with pytest.raises(OutOfOrder, match="waits for #1 of payment"):
        await box.process(shipped, every(record))
    assert await box.process(paid, every(record)) is Outcome.APPLIED
    assert await box.process(refunded, every(record)) is Outcome.APPLIED  # shipment pending
    assert await box.process(shipped, every(record)) is Outcome.APPLIED


async def test_a_forgotten_payment_copy_is_stale_not_a_conflict_with_the_shipment_at_its_number(
    box,
):
    """OrderPaid and OrderShipped are both #1 of the order, in two streams: a late copy of
    the OrderPaid (its id forgotten) meets the OrderShipped's inbox row at #1, which holds a
    place in the shipment stream, not in payment's: stale, not a conflict."""
    paid = events.order_paid()
    shipped = events.order_shipped(paid)
    await box.process(paid, every(record))
    later = utcnow() + timedelta(days=30)
    assert await box.forget_older_than(timedelta(days=7), now=later) == 1  # the paid row
    assert await box.process(shipped, every(record)) is Outcome.APPLIED
    assert await box.process(paid, every(record)) is Outcome.STALE
