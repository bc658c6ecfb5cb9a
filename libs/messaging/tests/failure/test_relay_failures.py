"""The outbox relay when the broker will not take an event: nothing is lost, it tries again."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from devstack import events
from devstack.wait import eventually_async
from messaging import outbox_store
from messaging.chassis import db
from messaging.outbox import OutboxRelay
from messaging.outbox_store import add_to_outbox, outbox_table
from messaging.topology import declare_exchange

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/payment.db")
    await db.create_schema(engine, outbox_store.metadata)
    yield db.session_factory(engine)
    await engine.dispose()


async def row(sessions, event):
    async with sessions() as session:
        return (await session.execute(
            select(outbox_table).where(outbox_table.c.event_id == str(event.event_id))
        )).one()


async def test_an_unroutable_event_is_logged_kept_in_the_outbox_and_retried_until_it_routes(
    sessions, connection, caplog
):
    caplog.set_level(logging.ERROR, logger="messaging.outbox")
    channel = await connection.channel()
    exchange = await declare_exchange(channel)  # the exchange exists; no queue is bound yet
    event = events.order_paid()
    async with sessions() as session, session.begin():
        await add_to_outbox(session, event)
    relay = OutboxRelay(sessions, lambda: _same(connection), poll_interval=0.05,
                        max_backoff=0.4)
    task = asyncio.create_task(relay.run())
    try:
        async def retried_unroutable():
            r = await row(sessions, event)
            return r.attempts >= 2 and r.published_at is None and r

        kept = await eventually_async(retried_unroutable, timeout=20)
        assert "NO_ROUTE" in kept.last_error
        assert f"outbox: event {event.event_id} not published" in caplog.text
        assert publishing() == 0  # accepting (the row is kept), not publishing

        # A consumer binds its queue: the next retry delivers the event, once.
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(exchange, "order.*")

        async def published():
            return (await row(sessions, event)).published_at is not None

        await eventually_async(published, timeout=20)
        assert publishing() == 1
        message = await queue.get(no_ack=True, timeout=10)
        assert message.message_id == str(event.event_id)
        assert await queue.get(no_ack=True, fail=False) is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await channel.close()


async def _same(connection):
    return connection


def publishing() -> float | None:
    """outbox_publishing of the relay (its default service label)."""
    return REGISTRY.get_sample_value("outbox_publishing", {"service": "producer"})
