"""A work queue deleted under its running consumer (issue 27, finding 5): said loudly (an
error naming the queue, `consumer_cancelled_total`), not consuming meanwhile (what /readyz
asks), and consuming again once the queue is back. Real broker, throwaway vhost; the queue
is deleted through the management API, as in the management UI."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from devstack import broker_faults, events
from devstack.wait import eventually_async
from messaging.inbox import Outcome

pytestmark = pytest.mark.integration


def cancelled(queue: str = "points.events") -> float:
    return REGISTRY.get_sample_value(
        "consumer_cancelled_total", {"service": "points", "queue": queue}) or 0.0


async def test_a_deleted_work_queue_is_logged_counted_and_not_consumed_until_it_is_back(
    vhost, publish, start_consumer, caplog
):
    name, _url = vhost
    applied: list[str] = []

    async def process(event) -> Outcome:
        applied.append(str(event.event_id))
        return Outcome.APPLIED

    consumer = await start_consumer(process)
    assert await consumer.consuming()
    before = cancelled()
    caplog.set_level(logging.ERROR, logger="messaging.operations.broker_cancel")
    # The work queue, its DLQ and two wait queues exist: no new queue may be declared, so
    # the re-declaration of the deleted one is refused while the limit holds.
    with broker_faults.vhost_limit(name, "max-queues", 3):
        broker_faults.delete_queue(name, "points.events")
        await eventually_async(lambda: _true(cancelled() == before + 1),
                               message="the cancel counted")
        assert any("points.events" in r.getMessage() and r.levelno == logging.ERROR
                   for r in caplog.records)
        assert not await consumer.consuming()
    await eventually_async(consumer.consuming, timeout=20, message="consuming again")
    good = events.order_paid()
    await publish(good)
    await eventually_async(lambda: _true(applied == [str(good.event_id)]), timeout=20,
                           message="a message after the queue came back applied")


async def _true(value: bool) -> bool:
    return value
