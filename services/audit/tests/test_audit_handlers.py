"""Audit's handler run in memory through its spec and real inbox (messaging.testing): every
event type reaches it (bound to `#`) and is recorded once. No RabbitMQ, milliseconds."""

from __future__ import annotations

import json

import pytest

from audit import store
from audit.spec import SPEC
from devstack import events
from messaging.inbox import Outcome
from messaging.testing.service import InMemoryService

pytestmark = pytest.mark.unit


async def test_every_event_type_of_an_order_is_recorded_once():
    paid = events.order_paid()
    async with InMemoryService(SPEC) as audit:
        for event in (paid, events.order_shipped(paid), events.order_refunded(paid), paid):
            await audit.deliver(event)
        async with audit.sessions() as session:
            trail = await store.events_of_order(session, str(paid.order_id))
    assert sorted((r["sequence"], r["event_type"]) for r in trail) == [
        (1, "OrderPaid"), (1, "OrderShipped"), (2, "OrderRefunded")]
    assert {r["correlation_id"] for r in trail} == {paid.correlation_id}


async def test_a_redelivered_event_is_a_duplicate_and_recorded_once():
    paid = events.order_paid()
    async with InMemoryService(SPEC) as audit:
        assert await audit.deliver(paid) is Outcome.APPLIED
        assert await audit.deliver(paid) is Outcome.DUPLICATE
        assert len(await audit.rows("audit_log")) == 1


async def test_a_version_1_event_is_kept_as_its_handler_read_it_upcast():
    paid = events.order_paid_v1(amount=700)
    async with InMemoryService(SPEC) as audit:
        await audit.deliver(paid)
        [row] = await audit.rows("audit_log")
    body = json.loads(row["body"])
    assert body["version"] == 2
    assert body["data"]["amount"] == {"value": 700, "currency": "JPY"}
