"""test_events_in_order.py without RabbitMQ: the real consumer on the in-memory broker
(its retry queues on the fake clock), points' spec and real inbox in memory. An event that
arrives before its predecessor waits in the retry queues, then is applied in order; if the
predecessor never comes, it ends in the DLQ as 'out-of-order'."""

from __future__ import annotations

import pytest

from devstack import events
from messaging import headers as h
from messaging.consumer import EventConsumer
from messaging.publisher import build_message, publish_confirmed
from messaging.testing.fake_broker import FakeBroker
from messaging.testing.service import InMemoryService
from messaging.topology import EXCHANGE, QueueTopology
from points import store
from points.spec import SPEC

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

TOPOLOGY = QueueTopology.for_service("points", (1,))


async def publish(broker: FakeBroker, event) -> None:
    exchange = await (await broker.channel()).get_exchange(EXCHANGE)
    await publish_confirmed(exchange, build_message(
        event.to_json(), message_id=str(event.event_id), correlation_id=event.correlation_id,
        event_type=event.event_type, timestamp=event.occurred_at), event.routing_key)


async def ledger_of(points: InMemoryService, customer: str) -> list[int]:
    async with points.sessions() as session:
        return [e["delta"] for e in await store.customer_entries(session, customer)]


async def test_a_refund_seen_before_its_payment_waits_and_is_applied_after_it():
    paid = events.order_paid(customer_id="early-refund", amount=1200)
    broker = FakeBroker()
    async with InMemoryService(SPEC) as points:
        consumer = EventConsumer(service="points", topology=TOPOLOGY, connection=broker,
                                 process=points.deliver, max_deferrals=10)
        await consumer.start()
        await publish(broker, events.order_refunded(paid))
        await broker.run(max_seconds=0.5)  # before the retry queue's TTL runs out
        assert [p.queue for p in broker.published] == ["points.events",
                                                       "points.events.retry.1s"]
        assert await ledger_of(points, "early-refund") == []

        await publish(broker, paid)
        await broker.run()
        await consumer.stop()
        assert await ledger_of(points, "early-refund") == [12, -12]  # never below 0
        assert broker.clock.now == 1.0  # the refund came back once, a second later


async def test_a_refund_whose_payment_never_comes_ends_in_the_dlq_as_out_of_order():
    orphan = events.order_refunded(events.order_paid(customer_id="orphan"))
    broker = FakeBroker()
    async with InMemoryService(SPEC) as points:
        consumer = EventConsumer(service="points", topology=TOPOLOGY, connection=broker,
                                 process=points.deliver, max_deferrals=2)
        await consumer.start()
        await publish(broker, orphan)
        await broker.run()
        await consumer.stop()
        [message] = broker.waiting(TOPOLOGY.dlq)
        assert message.message_id == str(orphan.event_id)
        assert message.headers[h.ERROR_CLASS] == "out-of-order"
        assert message.headers[h.ERROR_ATTEMPTS] == 3  # deferred twice, then given up
        assert "waits for #1" in message.headers[h.ERROR_MESSAGE]
        assert await ledger_of(points, "orphan") == []
