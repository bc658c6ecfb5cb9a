"""The consumer's decisions without a broker: ack, retry, defer, skip, dead-letter, exhausted.

The real EventConsumer runs against the in-memory broker (messaging.testing.fake_broker),
whose retry queues hand a message back when its TTL runs out on a fake clock. So "retry in
30 s" takes no real time, and each test runs in milliseconds. The same decisions against
RabbitMQ are in tests/failure/test_consumer_failures.py.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from devstack import events
from messaging import headers as h
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome, OutOfOrder
from messaging.settlement import PermanentError
from messaging.testing.fake_broker import Attempts, Delivery, FakeBroker
from messaging.topology import QueueTopology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

TOPOLOGY = QueueTopology("work.events", ("order.*",), retry_delays=(1, 5, 30))
DLQ = TOPOLOGY.dlq


async def consume(script, *, max_deferrals=10, body=None, headers=None):
    """Start a consumer on the fake broker, deliver one OrderPaid, run until all is settled."""
    broker = FakeBroker()
    process = Attempts(broker.clock, script)
    consumer = EventConsumer(service="work", topology=TOPOLOGY, connection=broker,
                             process=process, max_deferrals=max_deferrals)
    await consumer.start()
    event = events.order_paid()
    original = Delivery(body=body if body is not None else event.to_json(),
                        headers=dict(headers or {}), message_id=str(event.event_id),
                        correlation_id=event.correlation_id)
    broker.deliver(TOPOLOGY.name, original)
    await broker.run()
    await consumer.stop()
    return broker, process, original


def parked(broker: FakeBroker) -> list[Delivery]:
    return broker.waiting(DLQ)


@pytest.mark.parametrize("outcome", [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE])
async def test_applied_duplicate_and_stale_are_acked_and_copied_nowhere(outcome):
    broker, process, original = await consume([outcome])
    assert original.settled == "ack"
    assert process.at == [0.0]
    assert broker.published == []


async def test_an_ignored_event_type_is_acked_counted_as_ignored_and_copied_nowhere():
    ignored_before = REGISTRY.get_sample_value(
        "messages_ignored_total", {"service": "work", "event_type": "OrderPaid"}) or 0
    broker, process, original = await consume([Outcome.IGNORED])
    assert original.settled == "ack"
    assert broker.published == []  # neither deferred nor dead-lettered
    assert REGISTRY.get_sample_value(
        "messages_ignored_total", {"service": "work", "event_type": "OrderPaid"}
    ) == ignored_before + 1


async def test_a_transient_error_is_retried_after_each_delay_then_applied():
    broker, process, original = await consume(
        [ConnectionError("smtp down"), TimeoutError("slow"), Outcome.APPLIED])
    assert process.at == [0.0, 1.0, 6.0]  # 1 s, then 5 s later
    assert [(p.queue, p.headers[h.ATTEMPT]) for p in broker.published] == [
        ("work.events.retry.1s", 1), ("work.events.retry.5s", 2)]
    assert original.settled == "ack"  # the original goes once its copy is confirmed
    assert parked(broker) == []


async def test_a_transient_error_every_time_is_dead_lettered_as_exhausted():
    broker, process, _ = await consume([ConnectionError("smtp down")])
    assert process.at == [0.0, 1.0, 6.0, 36.0]  # one attempt per delay, then the DLQ
    [dead] = parked(broker)
    assert dead.headers[h.ERROR_CLASS] == "exhausted"
    assert dead.headers[h.ERROR_ATTEMPTS] == 4
    assert dead.headers[h.ERROR_TYPE] == "ConnectionError"
    assert dead.headers[h.ERROR_QUEUE] == "work.events"
    assert dead.headers[h.ERROR_SERVICE] == "work"


async def test_a_permanent_error_is_dead_lettered_at_once():
    broker, process, original = await consume([PermanentError("550 no such mailbox")])
    assert process.at == [0.0]
    [dead] = parked(broker)
    assert (dead.headers[h.ERROR_CLASS], dead.headers[h.ERROR_ATTEMPTS]) == ("permanent", 1)
    assert "550 no such mailbox" in dead.headers[h.ERROR_MESSAGE]
    assert original.settled == "ack"


async def test_poison_is_dead_lettered_without_calling_the_handler():
    broker, process, _ = await consume([Outcome.APPLIED], body=b"{not json")
    assert process.at == []
    [dead] = parked(broker)
    assert dead.headers[h.ERROR_CLASS] == "poison"
    assert dead.body == b"{not json"  # parked as it came, to be looked at


async def test_an_early_event_is_deferred_on_its_own_budget_then_applied():
    early = OutOfOrder(events.order_paid(), 0)
    broker, process, _ = await consume([early, early, early, early, Outcome.APPLIED])
    # Deferrals walk the same delays and stay on the last one; no transient attempt used.
    assert process.at == [0.0, 1.0, 6.0, 36.0, 66.0]
    assert [p.headers.get(h.DEFERRALS) for p in broker.published] == [1, 2, 3, 4]
    assert all(h.ATTEMPT not in p.headers for p in broker.published)
    assert parked(broker) == []


async def test_an_event_whose_predecessor_never_comes_is_dead_lettered_as_out_of_order():
    broker, process, _ = await consume([OutOfOrder(events.order_paid(), 0)], max_deferrals=2)
    assert process.at == [0.0, 1.0, 6.0]
    [dead] = parked(broker)
    assert (dead.headers[h.ERROR_CLASS], dead.headers[h.ERROR_ATTEMPTS]) == ("out-of-order", 3)


async def test_a_replayed_message_starts_with_a_fresh_budget_from_its_headers():
    # A message already on its last attempt (attempt header 3 of 3 delays) goes to the DLQ
    # on the next transient failure; the budget is read from the message, not kept in memory.
    broker, process, _ = await consume([ConnectionError("down")], headers={h.ATTEMPT: 3})
    assert process.at == [0.0]
    [dead] = parked(broker)
    assert dead.headers[h.ERROR_CLASS] == "exhausted"


async def test_a_copy_the_broker_does_not_confirm_leaves_the_original_requeued():
    broker = FakeBroker()
    consumer = EventConsumer(service="work", topology=TOPOLOGY, connection=broker,
                             process=Attempts(broker.clock, [ConnectionError("down")]))
    await consumer.start()
    broker.confirm = False
    event = events.order_paid()
    original = Delivery(body=event.to_json(), headers={}, message_id=str(event.event_id))
    broker.deliver(TOPOLOGY.name, original)
    await broker.run()
    await consumer.stop()
    assert original.settled == "nack-requeue"  # never acked without a confirmed copy
