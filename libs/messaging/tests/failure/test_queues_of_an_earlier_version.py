"""A broker that holds a service's queues from before its own exchange existed (their
dead-letter exchange the default one): the new version starts on them instead of being
refused, and a failing message still moves through its wait queue and back."""

from __future__ import annotations

import logging

import pytest

from devstack import events
from devstack.wait import eventually_async
from messaging.inbox import Outcome
from messaging.topology import QueueTopology, declare_exchange

from .conftest import FAST_DELAYS

pytestmark = pytest.mark.integration

TOPOLOGY = QueueTopology.for_service("points", FAST_DELAYS)
EARLIER = {"x-dead-letter-exchange": ""}  # what the queues were declared with before


async def declare_as_the_earlier_version(connection) -> None:
    channel = await connection.channel()
    await declare_exchange(channel)
    for delay in TOPOLOGY.retry_delays:
        await channel.declare_queue(TOPOLOGY.retry_queue(delay), durable=True,
                                    arguments={**TOPOLOGY.retry_arguments(delay), **EARLIER})
    await channel.declare_queue(TOPOLOGY.name, durable=True,
                                arguments={**TOPOLOGY.work_arguments(), **EARLIER})
    await channel.close()


async def test_a_consumer_starts_on_queues_of_the_earlier_version_and_retries_through_them(
    connection, publish, start_consumer, caplog
):
    await declare_as_the_earlier_version(connection)
    calls: list[str] = []

    async def fail_once(event) -> Outcome:
        calls.append(str(event.event_id))
        if len(calls) == 1:
            raise ConnectionError("database busy")
        return Outcome.APPLIED

    with caplog.at_level(logging.WARNING, logger="messaging.consumer"):
        consumer = await start_consumer(fail_once)
    assert consumer.is_consuming
    assert any("other arguments" in r.getMessage() for r in caplog.records)

    event = events.order_paid()
    await publish(event)

    # Failed once, copied to the old wait queue through the service's exchange, dead-lettered
    # back by the old queue's own arguments, then applied.
    async def retried() -> bool:
        return len(calls) == 2

    await eventually_async(retried, timeout=15,
                           message="the retry did not come back through the old wait queue")
    assert calls == [str(event.event_id)] * 2
