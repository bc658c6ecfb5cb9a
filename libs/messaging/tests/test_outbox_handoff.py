"""Rows handed to the relay after their commit are published from memory, without a poll;
rows whose hand-off never came (a crash between commit and hand-off) are the poll's."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, select

from devstack import events
from devstack.wait import eventually_async
from messaging import outbox, outbox_store
from messaging.chassis import db
from messaging.outbox import OutboxRelay
from messaging.outbox_store import add_to_outbox, outbox_table

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(outbox_store.metadata)




@pytest.fixture
def polls(sessions):
    """How many times a relay has read unsent rows from the table (its poll)."""
    counted = [0]

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().startswith("SELECT") and "ORDER BY outbox.id" in statement:
            counted[0] += 1

    engines = db.sync_engines(sessions.kw["bind"])
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    yield counted
    for engine in engines:
        event.remove(engine, "before_cursor_execute", count)


def relay(sessions, connection, **kwargs) -> OutboxRelay:
    async def connect():
        return connection

    return OutboxRelay(sessions, connect, **kwargs)


async def commit(sessions, *staged, hand_off=None):
    """Write the events' rows in one transaction, reserved with `hand_off` before the commit
    (as a use case does); returns the rows."""
    async with sessions() as session, session.begin():
        rows = [await add_to_outbox(session, e) for e in staged]
        if hand_off is not None:
            hand_off.reserve(rows)
    return rows


async def received(queue, expected: int, timeout: float = 10.0) -> list:
    got: list = []

    async def more():
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            got.append(message)
        return len(got) >= expected

    await eventually_async(more, timeout=timeout, message=f"{expected} messages arrive")
    await asyncio.sleep(0.2)  # anything beyond `expected` (a duplicate) would arrive now
    await more()
    return got


async def unsent(sessions) -> list[str]:
    async with sessions() as session:
        return list((await session.execute(
            select(outbox_table.c.event_id).where(outbox_table.c.published_at.is_(None))
        )).scalars())


async def running(r: OutboxRelay, polls, sessions):
    """Start the relay and wait until its first poll has read the (empty) table."""
    task = asyncio.create_task(r.run())
    await eventually_async(lambda: _true(polls[0] >= 1), message="the relay's first poll")
    await eventually_async(lambda: _true(r.caught_up), message="the relay caught up")
    return task


async def _true(value: bool) -> bool:
    return value


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handed_row_is_published_and_marked_without_a_poll(
    sessions, connection, tap, polls
):
    # A poll interval far beyond the test: only the hand-off can explain the delivery.
    r = relay(sessions, connection, poll_interval=3600)
    task = await running(r, polls, sessions)
    try:
        paid = events.order_paid()
        polled = polls[0]
        rows = await commit(sessions, paid, hand_off=r)
        r.release(rows, committed=True)

        [message] = await received(tap, 1)
        assert message.message_id == str(paid.event_id)
        assert message.body == paid.to_json()
        await eventually_async(lambda: _none_unsent(sessions), message="row marked sent")
        assert polls[0] == polled, "the row was read back by a poll"
    finally:
        await stop(task)


async def test_a_reserved_row_is_left_to_its_hand_off_by_the_poll_and_goes_out_once(
    sessions, connection, tap, polls
):
    r = relay(sessions, connection, poll_interval=3600)
    task = await running(r, polls, sessions)
    try:
        paid = events.order_paid()
        rows = await commit(sessions, paid, hand_off=r)
        polled = polls[0]
        r.notify()  # a poll now, between the commit and the hand-off
        await eventually_async(lambda: _true(polls[0] > polled), message="a poll ran")
        await eventually_async(lambda: _true(r.caught_up), message="the poll ended")
        assert await unsent(sessions) == [str(paid.event_id)]

        r.release(rows, committed=True)
        [message] = await received(tap, 1)
        assert message.message_id == str(paid.event_id)
    finally:
        await stop(task)


async def test_a_row_committed_but_never_handed_over_is_published_by_the_next_relays_poll(
    sessions, connection, tap
):
    # The process dies between its commit and the hand-off: the reservation dies with it.
    dead = relay(sessions, connection)
    paid = events.order_paid()
    await commit(sessions, paid, hand_off=dead)

    assert await relay(sessions, connection).publish_pending() == 1

    [message] = await received(tap, 1)
    assert message.message_id == str(paid.event_id)
    assert await unsent(sessions) == []


async def test_a_row_withdrawn_after_a_commit_of_unknown_outcome_is_published_by_the_poll(
    sessions, connection, tap, polls
):
    r = relay(sessions, connection, poll_interval=0.2)
    task = await running(r, polls, sessions)
    try:
        paid = events.order_paid()
        rows = await commit(sessions, paid, hand_off=r)
        r.release(rows, committed=False)  # e.g. the commit raised, yet it had committed

        [message] = await received(tap, 1)
        assert message.message_id == str(paid.event_id)
        await eventually_async(lambda: _none_unsent(sessions), message="row marked sent")
    finally:
        await stop(task)


async def test_an_orders_unsent_row_found_by_the_poll_leaves_before_its_handed_successor(
    sessions, connection, tap, polls
):
    # Left by a crash: the order's payment, committed, never published.
    paid = events.order_paid()
    await commit(sessions, paid)
    r = relay(sessions, connection, poll_interval=3600)
    refunded = events.order_refunded(paid)
    rows = await commit(sessions, refunded, hand_off=r)
    r.release(rows, committed=True)  # handed before the relay has polled at all

    task = asyncio.create_task(r.run())
    try:
        first, second = await received(tap, 2)
        assert [first.type, second.type] == ["OrderPaid", "OrderRefunded"]
    finally:
        await stop(task)


async def _none_unsent(sessions) -> bool:
    return await unsent(sessions) == []


async def test_rows_handed_while_publishing_is_stuck_are_left_to_the_poll_beyond_a_bound(
    sessions, connection, tap
):
    r = relay(sessions, connection, batch_size=2)  # not running: nothing is published
    staged = [events.order_paid() for _ in range(2 * outbox.HANDED_MAX_BATCHES + 3)]
    for paid in staged:
        r.release(await commit(sessions, paid, hand_off=r), committed=True)

    assert r.handed_count == 2 * outbox.HANDED_MAX_BATCHES
    assert r.reserved_count == r.handed_count and not r.caught_up
    # The poll takes the rows it was left (not those still reserved for the hand-off).
    while await r.publish_pending():
        pass
    got = await received(tap, 3)
    assert [m.message_id for m in got] == [str(e.event_id) for e in staged[-3:]]
