"""A consumer that publishes: its handler stages an event in the service's own outbox, in the
inbox transaction of the event that caused it; the runtime relays it with confirms.

Real RabbitMQ (a throwaway vhost), real SQLite and PostgreSQL. The staged event here is an
OrderRefunded derived from the consumed OrderPaid: the library does not care which type.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from sqlalchemy import func, select

from contracts import OrderPaid, OrderRefunded, parse_event
from devstack import events
from devstack.wait import eventually_async
from messaging import inbox, outbox_store
from messaging.chassis import db
from messaging.chassis.runtime import ConsumerRuntime
from messaging.chassis.settings import ConsumerSettings, OutboxSettings
from messaging.inbox import Inbox
from messaging.outbox_store import add_to_outbox, committed, staged_events
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.spec import Subscription, Subscriptions, every
from messaging.topology import declare_exchange

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# Any consuming service's topology will do; the runtime takes its queue from the spec.
SERVICE = "points"


class PublishingSettings(ConsumerSettings, OutboxSettings):
    pass


def paid_only(handler) -> Subscriptions:
    # The service's queue (points.events, order.*) also receives what it publishes; that
    # type has no subscription here, so it is ignored.
    return Subscriptions([Subscription(OrderPaid, handler)])


def derived(event) -> OrderRefunded:
    return OrderRefunded(
        event_id=uuid.uuid5(event.event_id, "derived"), occurred_at=event.occurred_at,
        correlation_id=event.correlation_id, order_id=event.order_id, sequence=2,
        data=events.payment_data(event),
    )


async def published_rows(sessions) -> tuple[int, int]:
    """(rows, rows marked published) in the outbox."""
    async with sessions() as session:
        total = await session.scalar(select(func.count()).select_from(outbox_store.outbox_table))
        sent = await session.scalar(select(func.count()).select_from(outbox_store.outbox_table)
                                    .where(outbox_store.outbox_table.c.published_at.is_not(None)))
    return int(total or 0), int(sent or 0)


@pytest.fixture
async def world(database_url, amqp_url):
    """(sessions, connection, received queue of order.refunded): a listener on the exchange
    stands for whoever consumes what the service publishes."""
    engine = db.create_engine(database_url)
    await db.create_schema(engine, inbox.metadata, outbox_store.metadata)
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    exchange = await declare_exchange(channel)
    listener = await channel.declare_queue("listener", exclusive=True)
    await listener.bind(exchange, "order.refunded")
    yield db.session_factory(engine), connection, listener
    await connection.close()
    await engine.dispose()


async def publish(connection, event) -> None:
    channel = await open_confirm_channel(connection)
    exchange = await declare_exchange(channel)
    message = build_message(event.to_json(), message_id=str(event.event_id),
                            correlation_id=event.correlation_id, event_type=event.event_type,
                            timestamp=event.occurred_at)
    await publish_confirmed(exchange, message, event.routing_key)
    await channel.close()


async def next_message(queue, timeout: float = 20.0):
    async with asyncio.timeout(timeout):
        while True:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None:
                return message
            await asyncio.sleep(0.05)


async def test_an_event_staged_by_a_handler_is_relayed_after_the_commit(world, database_url,
                                                                       amqp_url, speed_layer):
    sessions, connection, listener = world

    async def stage(event, session):
        await add_to_outbox(session, derived(event))

    settings = PublishingSettings(database_url=database_url, rabbitmq_url=amqp_url,
                                  outbox_poll_seconds=30,  # woken by the commit, not a poll
                                  speed_layer=speed_layer)
    runtime = ConsumerRuntime(SERVICE, settings, Inbox(sessions), paid_only(stage),
                              outbox_sessions=sessions)
    await runtime.start()
    try:
        await eventually_async(lambda: _ready(runtime), timeout=30, message="consuming")
        paid = events.order_paid()
        await publish(connection, paid)

        message = await next_message(listener)
        assert parse_event(message.body) == derived(paid)
        assert message.correlation_id == paid.correlation_id
        assert message.message_id == str(derived(paid).event_id)
        await eventually_async(lambda: _marked(sessions), timeout=10,
                               message="row marked published")
        assert await published_rows(sessions) == (1, 1)
    finally:
        await runtime.stop()


async def test_a_handler_that_fails_after_staging_leaves_no_row_and_its_retry_publishes_once(
    world, database_url, amqp_url, speed_layer
):
    sessions, connection, listener = world
    attempts = 0

    async def stage_then_fail_once(event, session):
        nonlocal attempts
        attempts += 1
        await add_to_outbox(session, derived(event))
        if attempts == 1:
            raise ConnectionError("effect failed after the row was staged")

    settings = PublishingSettings(database_url=database_url, rabbitmq_url=amqp_url,
                                  retry_delays=(1,), speed_layer=speed_layer)
    runtime = ConsumerRuntime(SERVICE, settings, Inbox(sessions), paid_only(stage_then_fail_once),
                              outbox_sessions=sessions)
    await runtime.start()
    try:
        await eventually_async(lambda: _ready(runtime), timeout=30, message="consuming")
        paid = events.order_paid()
        await publish(connection, paid)

        message = await next_message(listener)
        assert attempts == 2  # the rolled-back attempt staged nothing that went out
        assert parse_event(message.body) == derived(paid)
        # The relay marks the row after the broker's confirm, which can come after the copy
        # reached the listener.
        await eventually_async(lambda: _marked(sessions), timeout=10,
                               message="row marked published")
        assert await published_rows(sessions) == (1, 1)
        assert await listener.get(fail=False) is None
    finally:
        await runtime.stop()


def test_a_runtime_that_publishes_needs_outbox_settings():
    with pytest.raises(TypeError, match="OutboxSettings"):
        # Deliberately ill-typed: an inbox with no store, outbox sessions but no settings.
        ConsumerRuntime(SERVICE, ConsumerSettings(),
                        Inbox(None),  # type: ignore[arg-type]  # never reached
                        every(_nothing),
                        outbox_sessions=object())  # type: ignore[arg-type]  # the point of the test


async def _nothing(event, session):
    return None


async def _ready(runtime) -> bool:
    try:
        await runtime.check()
    except ConnectionError:
        return False
    return True


async def _marked(sessions) -> bool:
    total, sent = await published_rows(sessions)
    return sent == 1


async def test_staged_events_are_collected_and_only_committed_ones_are_kept(world):
    """What the synchronous mode hands on: the events a handler staged, minus those whose
    transaction rolled back."""
    sessions, _connection, _listener = world
    kept, rolled_back = derived(events.order_paid()), derived(events.order_paid())
    with staged_events() as staged:
        async with sessions() as session, session.begin():
            await add_to_outbox(session, kept)
        with pytest.raises(RuntimeError):
            async with sessions() as session, session.begin():
                await add_to_outbox(session, rolled_back)
                raise RuntimeError("the handler failed after staging")
    assert staged == [kept, rolled_back]
    assert await committed(sessions, staged + [kept]) == [kept]
    # Outside the block nothing is collected.
    async with sessions() as session, session.begin():
        await add_to_outbox(session, derived(events.order_paid()))
    assert staged == [kept, rolled_back]
