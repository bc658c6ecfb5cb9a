"""Order through the real consumer, broker and database: an event that arrives before its
predecessor waits in the retry queues (its own budget), then is applied in order; if the
predecessor never comes, it ends in the DLQ as 'out-of-order'. Uses the points rules, so
'a refund seen first never makes a balance negative' is checked on the real ledger."""

from __future__ import annotations

import aio_pika
import pytest

from devstack import events
from devstack.wait import eventually_async
from messaging import headers as h
from messaging import inbox
from messaging.consumer import EventConsumer
from messaging.inbox import Inbox
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import QueueTopology, declare_exchange
from points import store
from points.spec import SPEC

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


SUBSCRIPTIONS = SPEC.consumes.registry(None)


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(store.metadata, inbox.metadata)


@pytest.fixture
async def connection(amqp_url):
    conn = await aio_pika.connect_robust(amqp_url)
    channel = await conn.channel()
    await declare_exchange(channel)  # the publisher's job; consumers only bind
    await channel.close()
    yield conn
    await conn.close()


async def publish(connection, event) -> None:
    channel = await open_confirm_channel(connection)
    exchange = await declare_exchange(channel)
    await publish_confirmed(exchange, build_message(
        event.to_json(), message_id=str(event.event_id), correlation_id=event.correlation_id,
        event_type=event.event_type, timestamp=event.occurred_at), event.routing_key)
    await channel.close()


async def start(connection, sessions, max_deferrals: int) -> EventConsumer:
    box = Inbox(sessions)
    consumer = EventConsumer(
        service="points", topology=QueueTopology.for_service("points", (1,)),
        connection=connection, process=lambda e: box.process(e, SUBSCRIPTIONS),
        max_deferrals=max_deferrals)
    await consumer.start()
    return consumer


async def ledger_of(sessions, customer) -> list[int]:
    async with sessions() as session:
        return [e["delta"] for e in await store.customer_entries(session, customer)]


async def test_a_refund_seen_before_its_payment_waits_and_is_applied_after_it(
    connection, sessions
):
    paid = events.order_paid(customer_id="early-refund", amount=1200)
    consumer = await start(connection, sessions, max_deferrals=10)
    try:
        await publish(connection, events.order_refunded(paid))
        # The refund went to a wait queue: nothing applied, nothing negative.
        await eventually_async(lambda: _retry_queue_holds(connection), timeout=10,
                               message="refund deferred")
        assert await ledger_of(sessions, "early-refund") == []
        await publish(connection, paid)
        entries = await eventually_async(
            lambda: _entries_when(sessions, "early-refund", 2), timeout=30,
            message="both applied")
        assert entries == [12, -12]  # in sequence order: the balance never went below 0
    finally:
        await consumer.stop()


async def test_a_refund_whose_payment_never_comes_ends_in_the_dlq_as_out_of_order(
    connection, sessions
):
    orphan = events.order_refunded(events.order_paid(customer_id="orphan"))
    consumer = await start(connection, sessions, max_deferrals=2)
    try:
        await publish(connection, orphan)
        message = await eventually_async(lambda: _dlq_message(connection), timeout=30,
                                         message="dead-lettered")
        assert message.message_id == str(orphan.event_id)
        assert message.headers[h.ERROR_CLASS] == "out-of-order"
        assert message.headers[h.ERROR_ATTEMPTS] == 3  # deferred twice, then given up
        assert "waits for #1" in message.headers[h.ERROR_MESSAGE]
        assert await ledger_of(sessions, "orphan") == []
    finally:
        await consumer.stop()


async def _entries_when(sessions, customer, n):
    entries = await ledger_of(sessions, customer)
    return entries if len(entries) >= n else None


async def _retry_queue_holds(connection) -> bool:
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue("points.events.retry.1s", passive=True)
        return queue.declaration_result.message_count >= 1
    finally:
        await channel.close()


async def _dlq_message(connection):
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue("points.events.dlq", passive=True)
        message = await queue.get(no_ack=True, fail=False)
        return message
    finally:
        await channel.close()
