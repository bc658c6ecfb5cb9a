"""What watches the consumer (messaging/observability/middleware.py): a concern passed to it
sees every step of a delivery, and the consumer itself observes nothing. Fake broker and
fake clock (messaging.testing), as in test_consumer_decisions.py."""

from __future__ import annotations

import contextlib
import logging

import pytest
from prometheus_client import REGISTRY

from devstack import events
from messaging.consumer import EventConsumer
from messaging.inbox import Outcome
from messaging.observability.middleware import DEFAULT_MIDDLEWARE, Middleware
from messaging.settlement import PermanentError
from messaging.testing.fake_broker import Attempts, Delivery, FakeBroker
from messaging.topology import QueueTopology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

TOPOLOGY = QueueTopology("watched.events", ("order.*",), retry_delays=(1, 5))


class Recorder(Middleware):
    """Writes down each hook as it is called, and what the broker had been sent by then."""

    def __init__(self, broker: FakeBroker, name: str = "recorder"):
        self.broker, self.name, self.seen = broker, name, []

    @contextlib.contextmanager
    def handling(self, consumed):
        self.seen.append(f"{self.name} enters")
        try:
            yield
        finally:
            self.seen.append(f"{self.name} leaves")

    def parsed(self, consumed):
        self.seen.append(f"parsed {consumed.event.event_type}")

    def decided(self, consumed, settlement):
        self.seen.append(f"decided {type(settlement).__name__}, "
                         f"{len(self.broker.published)} copies sent")

    def settled(self, consumed, settlement):
        self.seen.append(f"settled {type(settlement).__name__}, "
                         f"{len(self.broker.published)} copies sent")


async def consume(script, middleware, *, body=None, broker=None, service="watched"):
    broker = broker or FakeBroker()
    consumer = EventConsumer(service=service, topology=TOPOLOGY, connection=broker,
                             process=Attempts(broker.clock, script),
                             middleware=middleware(broker))
    await consumer.start()
    event = events.order_paid()
    broker.deliver(TOPOLOGY.name, Delivery(
        body=body if body is not None else event.to_json(), headers={},
        message_id=str(event.event_id), correlation_id=event.correlation_id))
    await broker.run()
    await consumer.stop()
    return event


async def test_a_concern_sees_a_delivery_parsed_decided_and_settled_inside_its_handling():
    broker = FakeBroker()
    recorder = Recorder(broker)
    await consume([Outcome.APPLIED], lambda _: [recorder], broker=broker)
    assert recorder.seen == ["recorder enters", "parsed OrderPaid", "decided Ack, 0 copies sent",
                             "settled Ack, 0 copies sent", "recorder leaves"]


async def test_a_retry_is_decided_before_its_copy_goes_and_settled_once_it_went():
    broker = FakeBroker()
    recorder = Recorder(broker)
    await consume([ConnectionError("down"), Outcome.APPLIED], lambda _: [recorder],
                  broker=broker)
    assert recorder.seen[:5] == ["recorder enters", "parsed OrderPaid",
                                 "decided Retry, 0 copies sent", "settled Retry, 1 copies sent",
                                 "recorder leaves"]
    assert recorder.seen[-3:] == ["decided Ack, 1 copies sent", "settled Ack, 1 copies sent",
                                  "recorder leaves"]


async def test_poison_is_decided_without_being_parsed():
    broker = FakeBroker()
    recorder = Recorder(broker)
    await consume([Outcome.APPLIED], lambda _: [recorder], body=b"{not json", broker=broker)
    assert recorder.seen == ["recorder enters", "decided DeadLetter, 0 copies sent",
                             "settled DeadLetter, 1 copies sent", "recorder leaves"]


async def test_concerns_are_entered_in_the_order_given_and_left_in_reverse():
    broker = FakeBroker()
    outer, inner = Recorder(broker, "outer"), Recorder(broker, "inner")
    seen = outer.seen = inner.seen = []
    await consume([Outcome.APPLIED], lambda _: [outer, inner], broker=broker)
    assert [s for s in seen if " enters" in s or " leaves" in s] == [
        "outer enters", "inner enters", "inner leaves", "outer leaves"]


async def test_a_consumer_without_middleware_counts_and_logs_nothing(caplog):
    def consumed():
        return REGISTRY.get_sample_value(
            "messages_consumed_total", {"service": "unwatched", "event_type": "OrderPaid"}) or 0

    with caplog.at_level(logging.INFO, logger="messaging.consumer"):
        await consume([Outcome.APPLIED], lambda _: [], service="unwatched")
    assert consumed() == 0
    assert not [r for r in caplog.records if "applied" in r.getMessage()]


async def test_the_default_concerns_log_each_settlement_on_the_consumer_s_logger(caplog):
    with caplog.at_level(logging.INFO, logger="messaging.consumer"):
        event = await consume([ConnectionError("smtp down"), Outcome.APPLIED],
                              lambda _: DEFAULT_MIDDLEWARE)
    lines = [r.getMessage() for r in caplog.records if r.name == "messaging.consumer"]
    assert "attempt 1 failed (ConnectionError: smtp down); retrying in 1s" in lines
    assert f"applied OrderPaid {event.event_id}" in lines


async def test_a_concern_wraps_each_copy_the_consumer_publishes_until_the_broker_took_it():
    broker = FakeBroker()
    seen = []

    class Publishes(Middleware):
        @contextlib.contextmanager
        def publishing(self, published):
            sent = len(broker.published)
            yield
            seen.append(f"{published.routing_key}: {len(broker.published) - sent} sent")

    await consume([ConnectionError("down"), PermanentError("550")], lambda _: [Publishes()],
                  broker=broker)
    assert seen == ["watched.events.retry.1s: 1 sent", "watched.events.dlq: 1 sent"]
