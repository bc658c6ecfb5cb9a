"""The test kit (messaging.testing): a spec run in memory through the real inbox, and the
in-memory broker's routing, TTLs and dead-lettering on the fake clock."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert

from contracts import OrderPaid, OrderRefunded
from devstack import events
from messaging import outbox_store
from messaging.chassis.settings import ServiceSettings
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome, OutOfOrder
from messaging.publisher import PublishFailed, build_message, publish_confirmed
from messaging.spec import Consumes, ServiceSpec, Subscription
from messaging.testing.clock import FakeClock
from messaging.testing.fake_broker import Attempts, Delivery, FakeBroker
from messaging.testing.service import InMemoryService
from messaging.topology import EXCHANGE, QueueTopology, declare_exchange

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

tables = MetaData()
effects = Table("effects", tables, Column("event_id", String(36), primary_key=True),
                Column("kind", String(16), nullable=False))


async def pay(event, session):
    await session.execute(insert(effects).values(event_id=str(event.event_id), kind="paid"))
    await outbox_store.add_to_outbox(session, events.order_shipped(event))


async def refund(event, session):
    await session.execute(insert(effects).values(event_id=str(event.event_id), kind="refund"))


SPEC = ServiceSpec(
    name="kit", settings=ServiceSettings, tables=tables, routes=(), produces=("OrderShipped",),
    consumes=Consumes("kit.events", ("order.paid", "order.refunded"),
                      lambda _settings: [Subscription(OrderPaid, pay),
                                         Subscription(OrderRefunded, refund)]))


def message(event):
    return build_message(event.to_json(), message_id=str(event.event_id),
                         correlation_id=event.correlation_id, event_type=event.event_type,
                         timestamp=event.occurred_at)


async def test_a_spec_in_memory_applies_through_its_inbox_and_shows_what_it_staged():
    paid = events.order_paid()
    async with InMemoryService(SPEC) as service:
        assert await service.deliver(paid) is Outcome.APPLIED
        assert await service.deliver(paid) is Outcome.DUPLICATE
        assert await service.rows("effects") == [{"event_id": str(paid.event_id),
                                                  "kind": "paid"}]
        assert service.applied == [paid]
        [shipped] = service.staged
        assert (shipped.event_type, shipped.order_id) == ("OrderShipped", paid.order_id)


async def test_a_spec_in_memory_holds_an_early_event_as_its_inbox_does():
    paid = events.order_paid()
    async with InMemoryService(SPEC) as service:
        with pytest.raises(OutOfOrder, match="waits for #1"):
            await service.deliver(events.order_refunded(paid))
        assert await service.rows("effects") == []
        await service.deliver(paid)
        assert await service.deliver(events.order_refunded(paid)) is Outcome.APPLIED
        assert [e.event_type for e in service.applied] == ["OrderPaid", "OrderRefunded"]
        assert len(service.staged) == 1  # the refund staged nothing


async def test_an_event_type_the_bindings_do_not_route_never_reaches_the_service():
    async with InMemoryService(SPEC) as service:
        assert await service.deliver(events.order_shipped(events.order_paid())) is None
        assert service.applied == []


async def test_the_topic_exchange_routes_by_binding_pattern_and_a_message_for_nobody_fails():
    broker = FakeBroker()
    channel = await broker.channel()
    exchange = await declare_exchange(channel)
    for queue, key in [("everything", "#"), ("orders", "order.*"), ("paid", "order.paid"),
                       ("payments", "payment.#")]:
        await (await channel.declare_queue(queue)).bind(EXCHANGE, routing_key=key)

    paid = events.order_paid()
    for event in (paid, events.order_refunded(paid), events.order_shipped(paid)):
        await publish_confirmed(exchange, message(event), event.routing_key)
    with pytest.raises(PublishFailed, match="NO_ROUTE"):  # no queue of that name
        await publish_confirmed(channel.default_exchange, message(paid), "nobody")

    assert {q: len(broker.waiting(q)) for q in ("everything", "orders", "paid", "payments")} \
        == {"everything": 3, "orders": 3, "paid": 1, "payments": 0}
    assert [p.routing_key for p in broker.published if p.queue == "paid"] == ["order.paid"]


async def test_a_message_the_consumer_rejects_is_dead_lettered_by_the_broker():
    topology = QueueTopology("work.events", ("order.*",), retry_delays=(1,))
    broker = FakeBroker(FakeClock(now=100.0))
    consumer = EventConsumer(service="work", topology=topology, connection=broker,
                             process=Attempts(broker.clock, [Outcome.APPLIED]))
    await consumer.start()
    # Poison whose message id is too long for any copy (a short string holds 255 bytes):
    # the consumer cannot park it itself and rejects it to the broker's dead-lettering.
    poison = Delivery(body=b"{not json", headers={}, message_id="x" * 300)
    broker.deliver(topology.name, poison)
    await broker.run()
    await consumer.stop()

    assert poison.settled == "reject"
    assert broker.published == []  # no copy went out
    [dead] = broker.waiting(topology.dlq)
    assert (dead.body, dead.message_id) == (b"{not json", "x" * 300)


async def test_a_retry_queue_hands_its_message_back_when_the_fake_clock_reaches_its_ttl():
    topology = QueueTopology("work.events", ("order.*",), retry_delays=(5,))
    broker = FakeBroker(FakeClock(now=100.0))
    process = Attempts(broker.clock, [ConnectionError("down"), Outcome.APPLIED])
    consumer = EventConsumer(service="work", topology=topology, connection=broker,
                             process=process)
    await consumer.start()
    exchange = await (await broker.channel()).get_exchange(EXCHANGE)
    paid = events.order_paid()
    await publish_confirmed(exchange, message(paid), paid.routing_key)
    await broker.run()
    await consumer.stop()

    assert process.at == [100.0, 105.0]
    assert broker.clock() == 105.0
    assert [p.queue for p in broker.published] == ["work.events", "work.events.retry.5s"]


def test_the_fake_clock_moves_only_forward_and_only_when_told():
    clock = FakeClock()
    assert clock() == 0.0
    assert clock.advance(2.5) == 2.5 and clock.now == 2.5
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
