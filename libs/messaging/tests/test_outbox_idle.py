"""An idle relay: its poll backs off while there is nothing to publish, a commit brings it
back at once, and the backlog gauges are not read while nothing is pending.

The polls are watched as the statements the relay sends (SQLAlchemy's cursor events on a
real database, SQLite and PostgreSQL), timed by the test's own clock.
"""

import asyncio
import time

import aio_pika
import pytest
from sqlalchemy import event

from devstack import events
from devstack.wait import eventually_async
from messaging import outbox_store
from messaging.chassis import db
from messaging.outbox import OutboxRelay
from messaging.outbox_store import add_to_outbox
from messaging.topology import EXCHANGE

pytestmark = pytest.mark.integration


class Statements:
    """When the relay polled (its read of unsent rows) and read its backlog gauges."""

    def __init__(self) -> None:
        self.polls: list[float] = []
        self.lag_reads: list[float] = []

    def seen(self, _conn, _cursor, statement: str, *_args) -> None:
        sql = " ".join(statement.lower().split())
        if sql.startswith("select count(*)"):
            self.lag_reads.append(time.monotonic())
        elif sql.startswith("select outbox.id") and "order by outbox.id" in sql:
            self.polls.append(time.monotonic())

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.polls, self.polls[1:], strict=False)]


@pytest.fixture
async def watched(database_url):
    engine = db.create_engine(database_url)
    await db.create_schema(engine, outbox_store.metadata)
    statements = Statements()
    for sync_engine in db.sync_engines(engine):
        event.listen(sync_engine, "before_cursor_execute", statements.seen)
    yield db.session_factory(engine), statements
    await engine.dispose()



async def bound_queue(connection):
    channel = await connection.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "order.*")
    return queue


async def stopped(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def polls_seen(statements: Statements, count: int) -> bool:
    return len(statements.polls) >= count


async def test_an_idle_relay_polls_less_and_less_up_to_its_idle_interval(watched, connection):
    sessions, statements = watched
    relay = OutboxRelay(sessions, lambda: _value(connection), poll_interval=0.05,
                        idle_poll_interval=0.4)
    task = asyncio.create_task(relay.run())
    try:
        await eventually_async(lambda: polls_seen(statements, 6), timeout=15,
                               message="six polls")
    finally:
        await stopped(task)
    # The interval counts from a poll's start, so the first poll (which opens a connection,
    # asks the dialect) may take all of its 0.1 s: from the second poll on, the polls come
    # 0.2, 0.4, 0.4, 0.4 s apart. Summed, because a read sent late by a busy machine lengthens
    # one gap and shortens the next: in the sum only the second poll's lateness counts.
    assert statements.polls[5] - statements.polls[1] >= (0.2 + 0.4 * 3) * 0.75, \
        statements.gaps()


async def test_a_row_the_poll_finds_brings_the_poll_back_to_its_pace(watched, connection):
    queue = await bound_queue(connection)
    sessions, statements = watched
    relay = OutboxRelay(sessions, lambda: _value(connection), poll_interval=0.05,
                        idle_poll_interval=0.8)
    task = asyncio.create_task(relay.run())
    try:
        await eventually_async(lambda: polls_seen(statements, 5), timeout=15,
                               message="backed off")
        # Committed without notify() (another process's row, one a crash left): the
        # fallback poll finds it.
        paid = events.order_paid()
        async with sessions() as session, session.begin():
            await add_to_outbox(session, paid)
        message = await eventually_async(lambda: queue.get(fail=False), timeout=10,
                                         message="the poll publishes the row")
        assert message.message_id == str(paid.event_id)
        found_at = len(statements.polls)
        await eventually_async(lambda: polls_seen(statements, found_at + 2), timeout=10,
                               message="two more polls")
    finally:
        await stopped(task)
    after = statements.gaps()[found_at - 1]
    assert after < 0.8, statements.gaps()  # poll_interval again (0.05), not the idle 0.8


async def test_notify_wakes_a_backed_off_relay_at_once(watched, connection):
    queue = await bound_queue(connection)
    sessions, statements = watched
    # Backed off after the first poll to 20 s, longer than the deadline below.
    relay = OutboxRelay(sessions, lambda: _value(connection), poll_interval=10,
                        idle_poll_interval=3600)
    task = asyncio.create_task(relay.run())
    try:
        await eventually_async(lambda: polls_seen(statements, 1), message="first poll")
        paid = events.order_paid()
        async with sessions() as session, session.begin():
            await add_to_outbox(session, paid)
        relay.notify()
        message = await eventually_async(lambda: queue.get(fail=False), timeout=5,
                                         message="notified row published")
        assert message.message_id == str(paid.event_id)
    finally:
        await stopped(task)


async def test_the_backlog_gauges_are_not_read_while_nothing_is_pending(watched, connection):
    sessions, statements = watched
    relay = OutboxRelay(sessions, lambda: _value(connection), poll_interval=0.05,
                        idle_poll_interval=0.05)
    task = asyncio.create_task(relay.run())
    try:
        # Twenty polls at 0.05 s: a second, in which the gauges would have been read every
        # second while rows are pending.
        await eventually_async(lambda: polls_seen(statements, 20), timeout=15,
                               message="twenty polls")
        first_poll, last_poll = statements.polls[0], statements.polls[-1]
        assert last_poll - first_poll >= 0.9
        assert len([t for t in statements.lag_reads if first_poll < t <= last_poll]) <= 1
        # A commit (notify) is read again at once.
        paid = events.order_paid()
        async with sessions() as session, session.begin():
            await add_to_outbox(session, paid)
        committed_at = time.monotonic()
        relay.notify()
        await eventually_async(
            lambda: _true(any(t > committed_at for t in statements.lag_reads)), timeout=5,
            message="the gauges read after the commit")
    finally:
        await stopped(task)


async def _true(value: bool) -> bool:
    return value


async def _value(x):
    return x
