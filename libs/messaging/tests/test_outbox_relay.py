"""The relay publishes outbox rows with confirms and marks them sent only after the broker's ack."""

import aio_pika
import pytest
from sqlalchemy import select

from devstack import events
from devstack.wait import eventually_async
from messaging import outbox_store
from messaging.outbox import OutboxRelay
from messaging.outbox_store import add_to_outbox, outbox_table
from messaging.topology import EXCHANGE

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(outbox_store.metadata)



async def bound_queue(connection, routing_key="order.*"):
    channel = await connection.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, routing_key)
    return queue


async def unpublished(sessions) -> list:
    async with sessions() as session:
        return (await session.execute(
            select(outbox_table.c.event_id).where(outbox_table.c.published_at.is_(None))
        )).scalars().all()


async def test_relay_publishes_persistent_confirmed_messages_and_marks_rows_sent(
    sessions, connection
):
    queue = await bound_queue(connection)
    paid = events.order_paid()
    async with sessions() as session, session.begin():
        await add_to_outbox(session, paid)
    relay = OutboxRelay(sessions, lambda: _value(connection))

    assert await relay.publish_pending() == 1

    message = await eventually_async(lambda: queue.get(fail=False), message="message arrives")
    assert message.body == paid.to_json()
    assert message.message_id == str(paid.event_id)
    assert message.correlation_id == paid.correlation_id
    assert message.type == "OrderPaid"
    assert message.routing_key == "order.paid"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert await unpublished(sessions) == []


async def test_relay_publishes_rows_in_the_order_they_were_written(sessions, connection):
    queue = await bound_queue(connection)
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    async with sessions() as session, session.begin():
        await add_to_outbox(session, paid)
        await add_to_outbox(session, refunded)
    await OutboxRelay(sessions, lambda: _value(connection)).publish_pending()

    first = await eventually_async(lambda: queue.get(fail=False), message="first arrives")
    second = await eventually_async(lambda: queue.get(fail=False), message="second arrives")
    assert [first.type, second.type] == ["OrderPaid", "OrderRefunded"]


async def test_relay_wakes_on_notify_without_waiting_for_its_poll(sessions, connection):
    import asyncio

    queue = await bound_queue(connection)
    # A poll interval far longer than the test's deadline: only notify() can explain delivery.
    relay = OutboxRelay(sessions, lambda: _value(connection), poll_interval=3600)
    task = asyncio.create_task(relay.run())
    try:
        await eventually_async(lambda: _relay_idle(sessions), message="relay idle")
        paid = events.order_paid()
        async with sessions() as session, session.begin():
            await add_to_outbox(session, paid)
        relay.notify()
        message = await eventually_async(lambda: queue.get(fail=False), timeout=5,
                                         message="notified row published")
        assert message.message_id == str(paid.event_id)
    finally:
        task.cancel()


async def _relay_idle(sessions) -> bool:
    return await unpublished(sessions) == []


async def _value(x):
    return x


async def test_published_rows_past_the_retention_are_deleted_and_unsent_ones_kept(
    sessions, connection
):
    from datetime import timedelta

    from sqlalchemy import func, update

    from contracts import utcnow
    from messaging.outbox import forget_published_older_than

    await bound_queue(connection)
    old, recent, unsent = events.order_paid(), events.order_paid(), events.order_paid()
    async with sessions() as session, session.begin():
        for event in (old, recent, unsent):
            await add_to_outbox(session, event)
        await session.execute(
            update(outbox_table).where(outbox_table.c.event_id == str(old.event_id))
            .values(published_at=utcnow() - timedelta(days=30))
        )
        await session.execute(
            update(outbox_table).where(outbox_table.c.event_id == str(recent.event_id))
            .values(published_at=utcnow())
        )

    assert await forget_published_older_than(sessions, timedelta(days=7), batch=1) == 1

    async with sessions() as session:
        left = set((await session.execute(select(outbox_table.c.event_id))).scalars())
        assert left == {str(recent.event_id), str(unsent.event_id)}
        assert await session.scalar(select(func.count()).select_from(outbox_table)) == 2


async def test_a_published_row_continues_the_trace_of_the_transaction_that_wrote_it(
    sessions, connection, monkeypatch
):
    from opentelemetry.sdk.trace import TracerProvider

    from messaging.observability import instrumentation

    tracer = TracerProvider().get_tracer("test")
    monkeypatch.setattr(instrumentation, "_tracer", tracer)  # the publish span is recorded
    queue = await bound_queue(connection)
    with tracer.start_as_current_span("the request") as request:
        async with sessions() as session, session.begin():
            await add_to_outbox(session, events.order_paid())
    await OutboxRelay(sessions, lambda: _value(connection)).publish_pending()

    message = await eventually_async(lambda: queue.get(fail=False), message="message arrives")
    trace_id = f"{request.get_span_context().trace_id:032x}"
    assert trace_id in str((message.headers or {}).get("traceparent"))
