"""An effect outside the database (a mail) runs only for a new, in-order event, and holds no
database connection while it waits."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, select

from contracts import utcnow
from devstack import events
from messaging import inbox
from messaging.inbox import InProgress, Outcome, OutOfOrder
from messaging.spec import every

pytestmark = pytest.mark.integration

records_metadata = MetaData()
records = Table("records", records_metadata, Column("event_id", String(36), nullable=False))


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(records_metadata, inbox.metadata)


async def record(event, session):
    await session.execute(insert(records).values(event_id=str(event.event_id)))


async def recorded(sessions) -> list[str]:
    async with sessions() as session:
        return list((await session.execute(select(records.c.event_id))).scalars())


@pytest.fixture
def new_box(sessions, inbox_for):
    """A new inbox on the test's database at each call (another consumer's, say)."""
    return lambda: inbox_for(sessions)


async def test_the_side_effect_runs_once_for_a_new_event_and_not_for_its_duplicate(
    sessions, new_box
):
    sent = []

    async def send(event):
        sent.append(event.event_id)

    paid = events.order_paid()
    assert await new_box().process(paid, every(record, before=send)) is Outcome.APPLIED
    assert await new_box().process(paid, every(record, before=send)) is Outcome.DUPLICATE
    assert sent == [paid.event_id]
    assert await recorded(sessions) == [str(paid.event_id)]


async def test_the_side_effect_waits_for_the_predecessor_of_an_early_event(sessions, new_box):
    sent = []

    async def send(event):
        sent.append(event.event_id)

    refunded = events.order_refunded(events.order_paid())
    with pytest.raises(OutOfOrder):
        await new_box().process(refunded, every(record, before=send))
    assert sent == []


async def test_a_failed_side_effect_records_nothing_so_the_retry_sends_again(
    sessions, new_box
):
    async def refuse(_event):
        raise ConnectionRefusedError("smtp down")

    paid = events.order_paid()
    with pytest.raises(ConnectionRefusedError):
        await new_box().process(paid, every(record, before=refuse))
    assert await recorded(sessions) == []
    assert not await new_box().seen(str(paid.event_id))


async def test_the_side_effect_holds_no_database_connection(sessions, new_box):
    async def send_while_reading(event):
        # With SQLite's single pooled connection this would wait forever if we held it.
        async with sessions() as session:
            await session.execute(select(records.c.event_id))

    paid = events.order_paid()
    subscriptions = every(record, before=send_while_reading)
    assert await new_box().process(paid, subscriptions) is Outcome.APPLIED


async def test_a_side_effect_whose_task_is_cancelled_before_the_commit_is_still_recorded(
    sessions, new_box
):
    """aio-pika cancels a message's task when its channel closes. Once the mail went out, the
    record commits anyway, so the redelivered copy is a duplicate and sends nothing."""
    sent, entered, release = [], asyncio.Event(), asyncio.Event()

    async def send(event):
        sent.append(event.event_id)

    async def slow_record(event, session):
        entered.set()
        await release.wait()  # the commit is still to come when the channel closes
        await record(event, session)

    paid = events.order_paid()
    delivery = asyncio.create_task(new_box().process(paid, every(slow_record, before=send)))
    await asyncio.wait_for(entered.wait(), timeout=10)
    delivery.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await delivery
    assert await recorded(sessions) == [str(paid.event_id)]
    assert await new_box().process(paid, every(record, before=send)) is Outcome.DUPLICATE
    assert sent == [paid.event_id]


async def test_a_side_effect_cancelled_midway_runs_to_its_end_and_is_recorded(
    sessions, new_box
):
    """Issue 27, finding 2: the task is cancelled while the mail is under way (its end
    written, the server's 250 still to come). The mail may have gone out, so it is neither
    released as "not sent" nor left unrecorded: it runs to its end and commits."""
    sent, writing, answer = [], asyncio.Event(), asyncio.Event()

    async def send(event):
        writing.set()
        await answer.wait()
        sent.append(event.event_id)

    paid = events.order_paid()
    delivery = asyncio.create_task(new_box().process(paid, every(record, before=send)))
    await asyncio.wait_for(writing.wait(), timeout=10)
    delivery.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered before the answer
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await delivery
    assert await recorded(sessions) == [str(paid.event_id)]
    assert await new_box().process(paid, every(record, before=send)) is Outcome.DUPLICATE
    assert sent == [paid.event_id]


async def test_a_copy_that_finds_a_live_claim_of_another_copy_waits_and_sends_nothing(
    sessions, new_box
):
    """Two mailers (two Inboxes on one database) get copies of one event at once: the one
    that claimed it sends; the other raises InProgress (deferred like an early event)."""
    sent, release = [], asyncio.Event()

    async def slow_send(event):
        sent.append(event.event_id)
        await release.wait()

    paid = events.order_paid()
    first = asyncio.create_task(new_box().process(paid, every(record, before=slow_send)))
    while not sent:
        await asyncio.sleep(0.01)
    with pytest.raises(InProgress):
        await new_box().process(paid, every(record, before=slow_send))
    release.set()
    assert await first is Outcome.APPLIED
    assert sent == [paid.event_id]


async def test_a_claim_older_than_the_lease_is_taken_over_and_the_mail_sent(sessions, new_box):
    """Its holder died mid-step: after CLAIM_LEASE the copy claims it and sends."""
    sent = []

    async def send(event):
        sent.append(event.event_id)

    paid = events.order_paid()
    async with sessions() as session, session.begin():
        await session.execute(insert(inbox.claims_table).values(
            event_id=str(paid.event_id),
            claimed_at=utcnow() - inbox.CLAIM_LEASE - timedelta(seconds=1)))
    assert await new_box().process(paid, every(record, before=send)) is Outcome.APPLIED
    assert sent == [paid.event_id]
    assert await recorded(sessions) == [str(paid.event_id)]
