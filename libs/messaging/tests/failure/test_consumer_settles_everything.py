"""Every delivery ends settled (issue 17, finding 3): a copy that cannot be made is rejected
to the broker's own dead-lettering, and a consumer whose in-flight work stops moving says so.
Real broker, throwaway vhost; the copy failure is injected, everything else is real."""

from __future__ import annotations

import asyncio
import time

import pytest

from devstack import events
from devstack.wait import eventually_async
from messaging import consumer as consumer_module
from messaging import headers as h
from messaging.inbox import Outcome
from messaging.operations import dlq

pytestmark = pytest.mark.integration


async def test_a_message_whose_dlq_copy_cannot_be_made_goes_to_the_dlq_by_the_broker(
    connection, publish, start_consumer, monkeypatch
):
    def unencodable(*_args, **_kwargs):
        raise TypeError("Unsupported numeric value: 1e+38")  # what pamqp raised

    applied: list[str] = []

    async def process(event) -> Outcome:
        applied.append(str(event.event_id))
        return Outcome.APPLIED

    monkeypatch.setattr(consumer_module, "copy_message", unencodable)
    await start_consumer(process)
    poison_id = await publish(b"not json")
    good = events.order_paid()
    await publish(good)

    parked = await eventually_async(lambda: dlq.show(connection, "points", limit=10),
                                    timeout=20, message="the poison in the DLQ")
    [message] = parked
    assert message.message_id == poison_id and message.body == b"not json"
    assert h.ERROR_CLASS not in (message.headers or {})  # not our copy: the broker's
    [death] = message.headers["x-death"]
    assert death["reason"] == "rejected"
    await eventually_async(lambda: _value(applied), timeout=20, message="good applied")
    assert applied == [str(good.event_id)]


async def test_a_message_whose_own_headers_cannot_be_copied_is_parked_with_our_reason(
    connection, publish, start_consumer, monkeypatch
):
    """Issue 27: only a copy that cannot be made for the message itself ends with the
    broker, and first a copy with our headers alone is tried, so the DLQ says why."""
    real_copy = consumer_module.copy_message

    def unencodable_own_headers(message, headers):
        if "tracestate" in headers:  # its own header, carried on every copy of it
            raise TypeError("Unsupported numeric value: 1e+38")  # what pamqp raised
        return real_copy(message, headers)

    monkeypatch.setattr(consumer_module, "copy_message", unencodable_own_headers)
    await start_consumer(_applied)
    poison_id = await publish(b"not json", headers={"tracestate": "vendor=value"})

    parked = await eventually_async(lambda: dlq.show(connection, "points", limit=10),
                                    timeout=20, message="the poison in the DLQ")
    [message] = parked
    assert message.message_id == poison_id
    assert message.headers[h.ERROR_CLASS] == "poison"  # our copy, not the broker's
    assert "x-death" not in message.headers


async def _applied(_event) -> Outcome:
    return Outcome.APPLIED


async def test_in_flight_work_that_stops_moving_is_reported_as_a_stall(
    publish, start_consumer
):
    release = asyncio.Event()

    async def hangs(event) -> Outcome:
        await release.wait()
        return Outcome.APPLIED

    consumer = await start_consumer(hangs)
    assert consumer.stalled_for() == 0.0  # idle is not stalled
    await publish(events.order_paid())
    started = time.monotonic()
    await eventually_async(lambda: _value(consumer.stalled_for() > 0.5), timeout=10,
                           message="the stall reported")
    assert time.monotonic() - started < 5
    release.set()
    await eventually_async(lambda: _value(consumer.stalled_for() == 0.0), timeout=10,
                           message="no stall once the work moves again")


async def _value(value):
    return value
