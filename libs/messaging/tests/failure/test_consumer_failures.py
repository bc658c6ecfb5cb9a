"""What the consumer does when a message cannot be handled (real RabbitMQ, throwaway vhost):
poison goes to the DLQ at once, transient failures wait in the retry queues, a message that
keeps failing ends in the DLQ with its story in the headers, and the queue keeps flowing."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime

import pytest
from prometheus_client import REGISTRY

from contracts import MAX_BODY_BYTES
from devstack import events
from devstack.wait import eventually_async
from messaging import headers as h
from messaging.inbox import Outcome
from messaging.operations import dlq
from messaging.topology import QueueTopology

pytestmark = pytest.mark.integration

POINTS = QueueTopology.for_service("points")
TRACEPARENT = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def _valid() -> dict:
    return json.loads(events.order_paid().to_json())


POISON = {
    "not JSON": (b"this is not json", "not UTF-8 JSON"),
    "not UTF-8": (b'{"event_id": "\xff\xfe"}', "not UTF-8 JSON"),
    "wrong shape": (json.dumps({**_valid(), "data": {"amount": "lots"}}).encode(),
                    "does not match the contract"),
    "unknown event type": (json.dumps({**_valid(), "event_type": "OrderCancelled"}).encode(),
                           "unknown event_type 'OrderCancelled'"),
    "unknown version": (json.dumps({**_valid(), "version": 3}).encode(), "unknown version 3"),
    "oversized": (json.dumps({**_valid(), "pad": "x" * MAX_BODY_BYTES}).encode(),
                  "larger than"),
}


class Recorder:
    """A handler whose first `failures` calls raise `error`; records the events it applied."""

    def __init__(self, failures: int = 0, error: Exception | None = None):
        self.failures, self.error = failures, error or ConnectionError("database busy")
        self.calls: list[float] = []
        self.applied: list[str] = []

    async def __call__(self, event) -> Outcome:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.error
        self.applied.append(str(event.event_id))
        return Outcome.APPLIED


async def dlq_messages(connection) -> list:
    return await dlq.show(connection, "points", limit=100)


async def queue_count(connection, name: str) -> int | None:
    return await dlq.ready_count(connection, name)


@pytest.mark.parametrize("kind", list(POISON))
async def test_a_poison_message_goes_to_the_dlq_at_once_with_its_reason_and_the_next_is_processed(
    kind, connection, publish, start_consumer
):
    body, reason = POISON[kind]
    handler = Recorder()
    await start_consumer(handler)
    sent = time.monotonic()
    poison_id = await publish(body)
    good = events.order_paid()
    await publish(good)

    parked = await eventually_async(lambda: dlq_messages(connection), timeout=20,
                                    message=f"{kind} in the DLQ")
    print(f"{kind}: in the DLQ {time.monotonic() - sent:.3f}s after publishing")
    [message] = parked
    assert message.message_id == poison_id
    assert message.body == body  # parked as it came: nothing lost
    assert message.headers[h.ERROR_CLASS] == "poison"
    assert reason in message.headers[h.ERROR_MESSAGE]
    assert message.headers[h.ERROR_ATTEMPTS] == 1  # no retry for poison
    await eventually_async(lambda: _true(handler.applied), timeout=20, message="good processed")
    assert handler.applied == [str(good.event_id)]
    assert len(handler.calls) == 1  # the poison never reached the handler


async def _true(value):
    return value


async def test_a_junk_type_property_is_counted_under_unknown_not_as_a_new_metric_label(
    connection, publish, start_consumer
):
    junk = f"Junk{uuid.uuid4().hex}"
    before = REGISTRY.get_sample_value(
        "messages_dead_lettered_total",
        {"service": "points", "event_type": "unknown", "error_class": "poison"},
    ) or 0
    await start_consumer(Recorder())
    await publish(b"junk", type=junk)
    await eventually_async(lambda: dlq_messages(connection), timeout=20)

    after = REGISTRY.get_sample_value(
        "messages_dead_lettered_total",
        {"service": "points", "event_type": "unknown", "error_class": "poison"},
    )
    assert after == before + 1
    labels = {s.labels.get("event_type") for m in REGISTRY.collect() for s in m.samples}
    assert junk not in labels


async def test_a_handler_that_fails_twice_then_succeeds_is_processed_once_after_both_delays(
    connection, publish, start_consumer
):
    handler = Recorder(failures=2)
    await start_consumer(handler, delays=(1, 2))
    event = events.order_paid()
    await publish(event)

    await eventually_async(lambda: _true(handler.applied), timeout=30, message="processed")
    assert handler.applied == [str(event.event_id)]
    assert len(handler.calls) == 3
    # TTL queues never release early: the success came after 1 s + 2 s of waiting.
    assert handler.calls[2] - handler.calls[0] >= 1 + 2
    assert await dlq_messages(connection) == []
    for name in (POINTS.name, POINTS.retry_queue(1), POINTS.retry_queue(2)):
        assert await queue_count(connection, name) == 0, name


async def test_a_handler_that_always_fails_lands_in_the_dlq_after_the_configured_attempts(
    connection, publish, start_consumer
):
    handler = Recorder(failures=10**6, error=TimeoutError("smtp server did not answer"))
    await start_consumer(handler, delays=(1, 2))
    event = events.order_paid()
    await publish(event, headers={"traceparent": TRACEPARENT})

    [message] = await eventually_async(lambda: dlq_messages(connection), timeout=30)
    assert len(handler.calls) == 3  # the first try + one per configured delay
    hdrs = message.headers
    assert hdrs[h.ERROR_CLASS] == "exhausted"
    assert hdrs[h.ERROR_SERVICE] == "points"
    assert hdrs[h.ERROR_TYPE] == "TimeoutError"
    assert hdrs[h.ERROR_MESSAGE] == "smtp server did not answer"
    assert hdrs[h.ERROR_ATTEMPTS] == 3
    assert hdrs[h.ERROR_QUEUE] == "points.events"
    assert datetime.fromisoformat(hdrs[h.ERROR_AT]).tzinfo is not None
    # What identifies and traces the message survived every hop.
    assert message.message_id == str(event.event_id)
    assert message.correlation_id == event.correlation_id
    assert message.type == "OrderPaid"
    assert hdrs["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]  # the same trace
    assert message.body == event.to_json()


async def test_a_permanent_error_goes_to_the_dlq_without_retrying(
    connection, publish, start_consumer
):
    from messaging.settlement import PermanentError

    handler = Recorder(failures=10**6, error=PermanentError("550 no such mailbox"))
    await start_consumer(handler)
    await publish(events.order_paid())

    [message] = await eventually_async(lambda: dlq_messages(connection), timeout=20)
    assert len(handler.calls) == 1
    assert message.headers[h.ERROR_CLASS] == "permanent"
    assert message.headers[h.ERROR_TYPE] == "PermanentError"


async def test_a_message_waiting_for_a_retry_does_not_block_the_ones_behind_it(
    connection, publish, start_consumer
):
    failing = events.order_paid()

    async def process(event) -> Outcome:
        if event.event_id == failing.event_id:
            raise ConnectionError("down")
        applied.append(str(event.event_id))
        return Outcome.APPLIED

    applied: list[str] = []
    # Delays far longer than the test: the failing message waits while the others pass.
    await start_consumer(process, delays=(600,), prefetch=1)
    await publish(failing)
    others = [events.order_paid() for _ in range(3)]
    for event in others:
        await publish(event)

    await eventually_async(lambda: _true(len(applied) == 3), timeout=20)
    assert applied == [str(e.event_id) for e in others]
    assert await queue_count(connection, POINTS.retry_queue(600)) == 1
