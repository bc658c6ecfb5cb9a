"""Several relays on one PostgreSQL outbox (several payment instances): each row goes out once,
an order's events in order, and a dead relay's locked rows are taken over at once."""

import asyncio
import logging

import pytest
from sqlalchemy import func, select, text

from devstack import events, throwaway
from devstack.wait import eventually_async
from messaging import outbox_store
from messaging.chassis import db
from messaging.outbox import OutboxRelay
from messaging.outbox_store import add_to_outbox, outbox_table

pytestmark = pytest.mark.integration


@pytest.fixture
async def database_url():
    """PostgreSQL only: relays share an outbox by PostgreSQL's row locks (SQLite has one relay)."""
    async with throwaway.throwaway_postgres() as url:
        yield url


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(outbox_store.metadata)




def relay(sessions, connection, **kwargs) -> OutboxRelay:
    async def connect():
        return connection

    return OutboxRelay(sessions, connect, **kwargs)


def stuck_relay(sessions, stuck: asyncio.Event, release: asyncio.Event) -> OutboxRelay:
    """A relay that locks its batch of one, then hangs connecting to the broker (a process
    about to die): `stuck` is set then; once `release` is set, the connection fails."""

    async def connect():
        stuck.set()
        await release.wait()
        raise ConnectionError("the process is gone")

    return OutboxRelay(sessions, connect, batch_size=1)


async def drain(queue, expected: int, timeout: float = 15.0) -> list:
    received = []

    async def more():
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            received.append(message)
        return len(received) >= expected

    await eventually_async(more, timeout=timeout, message=f"{expected} messages arrive")
    await asyncio.sleep(0.2)  # anything beyond `expected` (a duplicate) would arrive now
    await more()
    return received


async def unsent(sessions) -> int:
    async with sessions() as session:
        return (await session.execute(
            select(func.count()).where(outbox_table.c.published_at.is_(None)))).scalar_one()


async def test_two_relays_on_one_outbox_publish_each_row_once_and_each_orders_events_in_order(
    sessions, connection, tap
):
    paid = [events.order_paid() for _ in range(30)]
    async with sessions() as session, session.begin():
        for event in paid:
            await add_to_outbox(session, event)
        for event in paid:
            await add_to_outbox(session, events.order_refunded(event))
    relays = [relay(sessions, connection, batch_size=7) for _ in range(2)]
    published = [0, 0]

    async def work(i: int) -> None:
        while await unsent(sessions):
            published[i] += await relays[i].publish_pending()

    await asyncio.gather(work(0), work(1))

    received = await drain(tap, 60)
    ids = [m.message_id for m in received]
    assert len(ids) == len(set(ids)) == 60, "a row went out twice or not at all"
    assert all(published), f"one relay did all the work: {published}"
    for event in paid:
        types = [m.type for m in received if str(event.order_id).encode() in m.body]
        assert types == ["OrderPaid", "OrderRefunded"], event.order_id


async def test_a_relay_waits_for_an_orders_earlier_event_held_by_another_and_takes_it_when_that_relay_dies(  # noqa: E501
    sessions, connection, tap
):
    x_paid = events.order_paid()
    y_paid = events.order_paid()
    async with sessions() as session, session.begin():
        await add_to_outbox(session, x_paid)
        await add_to_outbox(session, events.order_refunded(x_paid))
        await add_to_outbox(session, y_paid)

    stuck, release = asyncio.Event(), asyncio.Event()
    holder = stuck_relay(sessions, stuck, release)
    holding = asyncio.create_task(holder.publish_pending())
    await asyncio.wait_for(stuck.wait(), 10)

    other = relay(sessions, connection)
    assert await other.publish_pending() == 1  # Y only: X's refund waits for X's payment
    [first] = await drain(tap, 1)
    assert first.message_id == str(y_paid.event_id)

    # The holder's process dies: PostgreSQL ends its session, and its locks with it.
    async with sessions() as session:
        killed = (await session.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND state = 'idle in transaction'"
        ))).scalar_one()
    assert killed == 1

    async def holder_gone() -> bool:
        # pg_terminate_backend only signals: the locks go when the backend has exited.
        async with sessions() as session:
            return (await session.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction'"))).scalar_one() == 0

    await eventually_async(holder_gone, message="the holder's backend exits")
    assert await other.publish_pending() == 2
    rest = await drain(tap, 2)
    assert [m.type for m in rest] == ["OrderPaid", "OrderRefunded"]
    assert all(str(x_paid.order_id).encode() in m.body for m in rest)
    assert await unsent(sessions) == 0

    release.set()  # the dead relay's mark cannot land: its transaction is gone
    with pytest.raises(Exception):  # noqa: B017 - the driver's "connection terminated"
        await holding


async def test_a_relay_on_sqlite_says_it_is_the_only_one(tmp_path, caplog, connection):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/one.db")
    try:
        await db.create_schema(engine, outbox_store.metadata)
        engine_sessions = db.session_factory(engine)
        with caplog.at_level(logging.INFO, logger="messaging.outbox"):
            assert await relay(engine_sessions, connection).publish_pending() == 0
        assert "one relay per database" in caplog.text
    finally:
        await engine.dispose()


async def test_a_row_handed_to_one_relay_and_sent_by_anothers_poll_goes_out_once(
    sessions, connection, tap
):
    mine = relay(sessions, connection, poll_interval=3600)
    paid = events.order_paid()
    async with sessions() as session, session.begin():
        rows = [await add_to_outbox(session, paid)]
        mine.reserve(rows)
    # Another instance's poll knows nothing of this process's reservation.
    assert await relay(sessions, connection).publish_pending() == 1
    mine.release(rows, committed=True)

    task = asyncio.create_task(mine.run())
    try:
        await eventually_async(lambda: _handed_all(mine), message="hand-off done")
        received = await drain(tap, 1)
    finally:
        task.cancel()
    assert [m.message_id for m in received] == [str(paid.event_id)]


async def test_a_handed_row_waits_for_its_orders_earlier_row_held_by_another_relay(
    sessions, connection, tap
):
    x_paid = events.order_paid()
    async with sessions() as session, session.begin():
        await add_to_outbox(session, x_paid)
    stuck, release = asyncio.Event(), asyncio.Event()
    holder = stuck_relay(sessions, stuck, release)
    holding = asyncio.create_task(holder.publish_pending())
    await asyncio.wait_for(stuck.wait(), 10)

    mine = relay(sessions, connection, poll_interval=0.2)
    async with sessions() as session, session.begin():
        rows = [await add_to_outbox(session, events.order_refunded(x_paid))]
        mine.reserve(rows)
    mine.release(rows, committed=True)
    task = asyncio.create_task(mine.run())
    try:
        await eventually_async(lambda: _handed_all(mine), message="hand-off tried")
        assert await unsent(sessions) == 2  # the refund waits for the payment
        async with sessions() as session:
            await session.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND state = 'idle in transaction'"))
        received = await drain(tap, 2)
    finally:
        task.cancel()
        release.set()
        with pytest.raises(Exception):  # noqa: B017 - the driver's "connection terminated"
            await holding
    assert [m.type for m in received] == ["OrderPaid", "OrderRefunded"]


async def _handed_all(r: OutboxRelay) -> bool:
    return r.handed_count == 0 and r.reserved_count == 0
