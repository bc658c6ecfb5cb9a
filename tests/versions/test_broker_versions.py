"""What Mini EC relies on where RabbitMQ 3.10 and 4.x differ, checked on both.

Each test runs on the local 3.10 broker and on a RabbitMQ 4 node (the `rabbit4` fixture:
Debian's 4.0.5 in a network namespace). Where the brokers themselves differ, the test says
how, so a broker upgrade that changes it again fails here first.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import pytest

from devstack import throwaway
from messaging import headers as h
from messaging.topology import DELIVERY_LIMIT, QueueTopology, declare_exchange

pytestmark = pytest.mark.integration


@pytest.fixture(params=["3.10", "4"])
def broker(request):
    """(version, AMQP URL of a fresh vhost with full rights) on each broker."""
    if request.param == "3.10":
        with throwaway.throwaway_vhost("versions") as (_, url):
            yield "3.10", url
    else:
        with request.getfixturevalue("rabbit4").throwaway_vhost("versions") as url:
            yield "4", url


def _message(**headers) -> aio_pika.Message:
    return aio_pika.Message(b"{}", message_id=uuid.uuid4().hex, headers=headers,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def _get(channel, queue: str, deadline: float = 10.0):
    q = await channel.get_queue(queue, ensure=False)
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        message = await q.get(fail=False, no_ack=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    return None


async def _declared_points_queues(
    url: str, topology: QueueTopology | None = None
) -> aio_pika.abc.AbstractConnection:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await declare_exchange(channel)
    await (topology or QueueTopology.for_service("points")).declare(channel)
    await channel.close()
    return connection


async def test_a_message_whose_consumer_keeps_dying_is_dead_lettered_by_the_delivery_limit(broker):
    """A consumer process that dies on a message returns it unacked each time; the work
    queue's delivery limit parks it in the DLQ, reason `delivery_limit`, on both versions."""
    _, url = broker
    topology = QueueTopology.for_service("points")
    connection = await _declared_points_queues(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(_message(), routing_key=topology.name)
        deliveries = 0
        for _ in range(DELIVERY_LIMIT + 5):
            dying = await aio_pika.connect(url)  # a process that dies holding the message
            message = await _get(await dying.channel(), topology.name, deadline=2)
            await dying.close()
            if message is None:
                break
            deliveries += 1
        parked = await _get(channel, topology.dlq)
        assert parked is not None, "not dead-lettered"
        assert deliveries == DELIVERY_LIMIT + 1
        deaths = parked.headers.get("x-death") or []
        assert deaths and deaths[0]["reason"] == "delivery_limit"
        assert deaths[0]["queue"] == topology.name
    finally:
        await connection.close()


async def test_our_headers_survive_a_wait_queue_and_a_client_set_x_delivery_count_is_ignored(
    broker,
):
    """The retry count lives in our own header and comes back from the wait queue; `x-`
    headers are the broker's bookkeeping: a client-set `x-delivery-count` does not bring the
    delivery limit closer (3.10 resets it to 0, 4.0 passes it through and counts itself)."""
    version, url = broker
    topology = QueueTopology.for_service("points", (1,))
    connection = await _declared_points_queues(url, topology)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            _message(**{h.ATTEMPT: 2, "x-delivery-count": 100}),
            routing_key=topology.retry_queue(1),
        )
        message = await _get(channel, topology.name, deadline=15)
        assert message is not None, "did not come back from the wait queue"
        assert message.headers[h.ATTEMPT] == 2
        assert message.headers["x-death"][0]["reason"] == "expired"
        assert message.headers["x-delivery-count"] == (0 if version == "3.10" else 100)
        await message.nack(requeue=True)  # one return: far below the limit of 5
        again = await _get(channel, topology.name)
        assert again is not None, "dead-lettered as if x-delivery-count were the broker's"
        await again.ack()
    finally:
        await connection.close()


async def _returns_survived(url: str, queue: str, returns: int) -> int:
    """Get and requeue the one message of `queue` up to `returns` times (what `dlq show`
    does); how many gets found it."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        found = 0
        for _ in range(returns):
            message = await _get(channel, queue, deadline=1)
            if message is None:
                break
            found += 1
            await message.nack(requeue=True)
        return found


async def test_a_parked_message_survives_being_looked_at_any_number_of_times(broker):
    """RabbitMQ 4 gives a quorum queue without an explicit delivery limit a limit of 20 and
    drops a message past it; the DLQ sets its own, so 30 looks leave it in place."""
    version, url = broker
    topology = QueueTopology.for_service("points")
    connection = await _declared_points_queues(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(_message(), routing_key=topology.dlq)
        await channel.declare_queue("no-limit", durable=True,
                                    arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(_message(), routing_key="no-limit")
    finally:
        await connection.close()
    assert await _returns_survived(url, topology.dlq, 30) == 30
    # The broker default the DLQ's own limit guards against:
    assert await _returns_survived(url, "no-limit", 30) == (30 if version == "3.10" else 21)


async def test_a_failure_sent_back_by_nack_is_parked_by_the_limit_and_a_fresh_copy_is_not(broker):
    """What the kill switch relies on (docs/failure.md#no-retry-budget-spent-on-an-outage): a
    message failed again and again during an outage and given back with `nack(requeue=True)`
    is dead-lettered by the work queue's delivery limit on both versions (4.0 counts a
    requeue after a failure as 3.10 counts every return); sent back as a fresh copy (publish
    to the work queue, then ack) it is not, however often."""
    _, url = broker
    topology = QueueTopology.for_service("points")
    connection = await _declared_points_queues(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(_message(), routing_key=topology.name)
        nacks = 0
        for _ in range(DELIVERY_LIMIT + 5):
            message = await _get(channel, topology.name, deadline=2)
            if message is None:
                break
            nacks += 1
            await message.nack(requeue=True)
        parked = await _get(channel, topology.dlq)
        assert parked is not None and nacks == DELIVERY_LIMIT + 1
        assert (parked.headers.get("x-death") or [{}])[0].get("reason") == "delivery_limit"
        await parked.ack()

        await channel.default_exchange.publish(_message(), routing_key=topology.name)
        for _ in range(3 * DELIVERY_LIMIT):
            message = await _get(channel, topology.name, deadline=2)
            assert message is not None, "the copy was lost"
            copy = aio_pika.Message(message.body, message_id=message.message_id,
                                    headers={k: v for k, v in (message.headers or {}).items()
                                             if not k.startswith("x-")},  # as the consumer
                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(copy, routing_key=topology.name)
            await message.ack()
        assert await _get(channel, topology.name, deadline=2) is not None
        assert await _get(channel, topology.dlq, deadline=0.5) is None
    finally:
        await connection.close()
