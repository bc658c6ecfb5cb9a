"""A consumer acks only after its effect and inbox record commit; a redelivery changes nothing."""

import asyncio

import aio_pika
import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select

from devstack import events
from devstack.wait import eventually_async
from messaging import inbox
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.spec import every
from messaging.topology import QueueTopology, declare_exchange

pytestmark = pytest.mark.integration

effects_metadata = MetaData()
effects = Table("effects", effects_metadata, Column("event_id", String(36), nullable=False))


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(effects_metadata, inbox.metadata)


@pytest.fixture
def box(inbox_for):
    """`box(sessions)`: the consumer's inbox, on the plain path or through the speed layer."""
    return inbox_for


async def record_effect(event, session):
    await session.execute(insert(effects).values(event_id=str(event.event_id)))


async def effect_count(sessions, event) -> int:
    async with sessions() as session:
        return await session.scalar(
            select(func.count()).select_from(effects).where(
                effects.c.event_id == str(event.event_id))
        )


async def publish(connection, event) -> None:
    channel = await open_confirm_channel(connection)
    exchange = await declare_exchange(channel)
    message = build_message(event.to_json(), message_id=str(event.event_id),
                            correlation_id=event.correlation_id, event_type=event.event_type,
                            timestamp=event.occurred_at)
    await publish_confirmed(exchange, message, event.routing_key)
    await channel.close()


async def start_consumer(amqp_url, box, handler, outcomes=None, before=None, tasks=None):
    """`tasks`, when given, gets each message's task (the one aio-pika cancels)."""
    connection = await aio_pika.connect_robust(amqp_url)

    async def process(event):
        if tasks is not None:
            tasks.append(asyncio.current_task())
        outcome = await box.process(event, every(handler, before=before))
        if outcomes is not None:
            outcomes.append(outcome)
        return outcome

    consumer = EventConsumer(service="points", topology=QueueTopology.for_service("points"),
                             connection=connection, process=process, prefetch=4)
    await consumer.start()
    return connection, consumer


async def queue_is_empty(amqp_url) -> bool:
    """Nothing ready and nothing unacked: passive declare counts ready; get proves no unacked."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("points.events", passive=True)
        return queue.declaration_result.message_count == 0
    finally:
        await connection.close()


async def test_the_same_event_delivered_twice_has_one_effect(amqp_url, sessions, box):
    outcomes: list[Outcome] = []
    connection, consumer = await start_consumer(amqp_url, box(sessions), record_effect, outcomes)
    try:
        paid = events.order_paid()
        await publish(connection, paid)
        await publish(connection, paid)
        await eventually_async(lambda: _ready(outcomes, 2), message="both deliveries settled")
        assert await effect_count(sessions, paid) == 1
        assert sorted(outcomes) == sorted([Outcome.APPLIED, Outcome.DUPLICATE])
    finally:
        await consumer.stop()
        await connection.close()


async def test_a_consumer_that_dies_before_committing_leaves_the_message_for_the_next(
    amqp_url, sessions, box
):
    entered = asyncio.Event()
    never = asyncio.Event()

    async def stuck_handler(event, session):
        await record_effect(event, session)
        entered.set()
        await never.wait()  # holds the transaction open: nothing committed, nothing acked

    connection, consumer = await start_consumer(amqp_url, box(sessions), stuck_handler)
    paid = events.order_paid()
    await publish(connection, paid)
    await asyncio.wait_for(entered.wait(), timeout=10)
    await connection.close()  # the crash: the broker takes the unacked message back
    assert await effect_count(sessions, paid) == 0

    outcomes: list[Outcome] = []
    connection, consumer = await start_consumer(amqp_url, box(sessions), record_effect, outcomes)
    try:
        await eventually_async(lambda: _ready(outcomes, 1), message="redelivered and applied")
        assert outcomes == [Outcome.APPLIED]
        assert await effect_count(sessions, paid) == 1
        assert await eventually_async(lambda: queue_is_empty(amqp_url), message="acked")
    finally:
        await consumer.stop()
        await connection.close()


async def test_a_mail_sent_just_before_the_connection_drops_is_recorded_and_not_sent_again(
    amqp_url, sessions, box
):
    """The link drops between the SMTP server's 250 and the commit (aio-pika then cancels the
    message's task): the record still commits, and the redelivery is a duplicate."""
    sent, entered, release = [], asyncio.Event(), asyncio.Event()
    delivery_tasks = []

    async def send_mail(event):
        sent.append(event.event_id)

    async def slow_record(event, session):
        entered.set()
        await release.wait()
        await record_effect(event, session)

    connection, consumer = await start_consumer(amqp_url, box(sessions), slow_record,
                                                before=send_mail, tasks=delivery_tasks)
    paid = events.order_paid()
    await publish(connection, paid)
    await asyncio.wait_for(entered.wait(), timeout=10)
    closing = asyncio.create_task(connection.close())  # unacked: the broker redelivers it
    [delivery] = delivery_tasks
    await eventually_async(lambda: _true(delivery.cancelling() > 0), message="task cancelled")
    release.set()  # the commit comes after the cancellation
    await asyncio.wait_for(closing, timeout=10)
    # The close does not wait for the message's task; the task ends once its record is in.
    await asyncio.wait([delivery], timeout=10)
    assert delivery.done()
    assert await effect_count(sessions, paid) == 1

    outcomes: list[Outcome] = []
    connection, consumer = await start_consumer(amqp_url, box(sessions), record_effect, outcomes,
                                                before=send_mail)
    try:
        await eventually_async(lambda: _ready(outcomes, 1), message="redelivered and settled")
        assert outcomes == [Outcome.DUPLICATE]
        assert sent == [paid.event_id]
        assert await eventually_async(lambda: queue_is_empty(amqp_url), message="acked")
    finally:
        await consumer.stop()
        await connection.close()


async def test_a_mail_under_way_when_the_connection_drops_is_finished_recorded_and_sent_once(
    amqp_url, sessions, box
):
    """Issue 27, finding 2: the link drops while the SMTP server has the whole mail and has
    not answered yet (aio-pika cancels the message's task). The send runs to its end and is
    recorded; the redelivered copy is a duplicate, not a second mail."""
    sent, writing, answer = [], asyncio.Event(), asyncio.Event()
    delivery_tasks = []

    async def send_mail(event):
        writing.set()
        await answer.wait()  # the mail's end is written; the 250 is on its way
        sent.append(event.event_id)

    connection, consumer = await start_consumer(amqp_url, box(sessions), record_effect,
                                                before=send_mail, tasks=delivery_tasks)
    paid = events.order_paid()
    await publish(connection, paid)
    await asyncio.wait_for(writing.wait(), timeout=10)
    closing = asyncio.create_task(connection.close())  # unacked: the broker redelivers it
    [delivery] = delivery_tasks
    await eventually_async(lambda: _true(delivery.cancelling() > 0), message="task cancelled")
    answer.set()  # the server's 250 comes after the cancellation
    await asyncio.wait_for(closing, timeout=10)
    await asyncio.wait([delivery], timeout=10)
    assert delivery.done()
    assert await effect_count(sessions, paid) == 1

    outcomes: list[Outcome] = []
    connection, consumer = await start_consumer(amqp_url, box(sessions), record_effect, outcomes,
                                                before=send_mail)
    try:
        await eventually_async(lambda: _ready(outcomes, 1), message="redelivered and settled")
        assert outcomes == [Outcome.DUPLICATE]
        assert sent == [paid.event_id]
    finally:
        await consumer.stop()
        await connection.close()


async def _true(value: bool) -> bool:
    return value


async def _ready(outcomes, n) -> bool:
    return len(outcomes) >= n
