"""The kill switch against the real broker (throwaway vhost): a dependency down for everyone
pauses the consumer without spending any message's retry budget or the queue's delivery
limit; a poison message and a handler bug still take the ladder to the DLQ without tripping
it. Small windows and cool-downs keep it to seconds; the decisions are the same."""

from __future__ import annotations

import logging
import uuid
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr

from devstack import events
from devstack.wait import eventually_async
from messaging import headers as h
from messaging.inbox import Outcome
from messaging.operations import dlq
from messaging.operations.admin import consumer_router
from messaging.operations.flow_control import FlowControl
from messaging.operations.killswitch import Mode, Policy
from messaging.topology import DELIVERY_LIMIT, QueueTopology

pytestmark = pytest.mark.integration

POINTS = QueueTopology.for_service("points")
# Trips after 3 failures in a row; probes every 0.2-0.4 s, so an outage of a few seconds
# sees more failed probes than the queue's delivery limit (5) allows redeliveries.
QUICK = Policy(failure_ratio=0.8, window_seconds=10, min_messages=3, cooldown_seconds=0.2,
               max_cooldown_seconds=0.4)


class Dependency:
    """A handler whose dependency is down until `up()`; counts what it applied."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.applied: Counter[str] = Counter()

    async def __call__(self, event) -> Outcome:
        self.calls += 1
        if self.down:
            raise ConnectionError("mail server refuses connections")
        self.applied[str(event.event_id)] += 1
        return Outcome.APPLIED


def samples(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def consumers_on(connection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count
    finally:
        await channel.close()


async def test_a_dependency_down_for_everyone_pauses_and_nothing_spends_its_budget_or_reaches_the_dlq(  # noqa: E501
    connection, publish, start_consumer
):
    service = f"ks-{uuid.uuid4().hex[:6]}"
    handler = Dependency()
    flow = FlowControl(service, QUICK, prefetch=8)
    await start_consumer(handler, flow=flow, service=service)
    sent = [await publish(events.order_paid()) for _ in range(8)]

    await eventually_async(lambda: _paused_by_switch(flow), timeout=10, message="tripped")
    # Keep it down through more failed probes than the delivery limit would survive, and
    # longer than the retry ladder (1 s, 2 s) takes to park a message.
    await eventually_async(
        lambda: _at_least(samples("consumer_pauses_total", service=service, by="switch"),
                          DELIVERY_LIMIT + 2),
        timeout=15, message="failed probes")
    waiting = await dlq.ready_count(connection, POINTS.name)
    assert waiting is not None and waiting > 0  # the work waits in its queue
    assert await dlq.ready_count(connection, POINTS.dlq) == 0

    handler.down = False

    await eventually_async(lambda: _all_applied(handler, sent), timeout=15,
                           message="every message applied after the dependency is back")
    assert flow.switch.status.mode is Mode.RUNNING
    assert all(handler.applied[i] == 1 for i in sent), handler.applied
    assert await dlq.ready_count(connection, POINTS.dlq) == 0
    assert samples("messages_retried_total", service=service, event_type="OrderPaid",
                   reason="paused") > 0
    # The ladder was used only below the threshold: at most the first failures, once each.
    assert samples("messages_retried_total", service=service, event_type="OrderPaid",
                   reason="transient") < QUICK.min_messages
    assert await consumers_on(connection, POINTS.name) == 1


async def test_a_probe_that_says_nothing_about_the_dependency_passes_the_probe_on(
    connection, publish, start_consumer
):
    service = f"ks-{uuid.uuid4().hex[:6]}"
    handler = Dependency()
    flow = FlowControl(service, Policy(failure_ratio=0.8, window_seconds=10, min_messages=3,
                                       cooldown_seconds=2, max_cooldown_seconds=2), prefetch=8)
    await start_consumer(handler, flow=flow, service=service)
    for _ in range(3):
        await publish(events.order_paid())
    await eventually_async(lambda: _count_is(connection, POINTS.name, 3), timeout=10,
                           message="tripped, the three back in the queue")
    assert flow.switch.status.mode is Mode.PAUSED
    channel = await connection.channel()
    await (await channel.get_queue(POINTS.name)).purge()  # the next message is the poison
    await channel.close()
    poison_id = await publish(b"this is not json")
    good = events.order_paid()
    await publish(good)
    handler.down = False

    # The poison is the first probe: parked, and no verdict; the good one probes next.
    await eventually_async(lambda: _all_applied(handler, [str(good.event_id)]), timeout=10)
    await eventually_async(lambda: _running(flow), timeout=5, message="resumed")
    assert [m.message_id for m in await dlq.show(connection, "points")] == [poison_id]


async def test_a_poison_message_and_a_handler_bug_take_the_ladder_to_the_dlq_without_tripping(
    connection, publish, start_consumer
):
    service = f"ks-{uuid.uuid4().hex[:6]}"
    paid = [events.order_paid() for _ in range(40)]
    buggy = {str(e.event_id) for e in paid[::10]}  # one message in ten

    async def handler(event) -> Outcome:
        if str(event.event_id) in buggy:
            raise KeyError("a handler bug")
        return Outcome.APPLIED

    # The defaults a service runs with; the ladder's delays shortened (FAST_DELAYS).
    flow = FlowControl(service, Policy(), prefetch=8)
    await start_consumer(handler, flow=flow, service=service)
    poison_id = await publish(b"this is not json")
    for event in paid:
        await publish(event)

    parked = await eventually_async(
        lambda: _parked(connection, len(buggy) + 1), timeout=30, message="parked")
    classes = {m.message_id: m.headers[h.ERROR_CLASS] for m in parked}
    assert classes == {poison_id: "poison", **dict.fromkeys(buggy, "exhausted")}
    assert samples("consumer_pauses_total", service=service, by="switch") == 0
    assert flow.switch.status.mode is Mode.RUNNING
    assert samples("consumer_state", service=service, consumer_state="running") == 1


async def test_an_operator_pauses_and_resumes_a_consumer_with_the_admin_token_and_is_audited(
    connection, publish, start_consumer, caplog
):
    service = f"ks-{uuid.uuid4().hex[:6]}"
    handler = Dependency()
    handler.down = False
    flow = FlowControl(service, QUICK, prefetch=8)
    await start_consumer(handler, flow=flow, service=service)
    app = FastAPI()
    app.include_router(consumer_router(service, flow, SecretStr("s" * 32)))
    caplog.set_level(logging.INFO, logger="messaging.operator")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ops") as client:
        refused = [
            await client.post("/consumer/pause", json={"reason": "maintenance"}),
            await client.post("/consumer/pause", json={"reason": "maintenance"},
                              headers={"Authorization": "Bearer wrong-token-wrong-token"}),
            await client.post("/consumer/resume", headers={"Authorization": "Basic x"}),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401]
        assert refused[0].headers["WWW-Authenticate"] == "Bearer"
        assert flow.switch.status.mode is Mode.RUNNING

        auth = {"Authorization": f"Bearer {'s' * 32}"}
        bad = await client.post("/consumer/pause", json={"reason": "a\nforged line"},
                                headers=auth)
        assert bad.status_code == 422
        paused = await client.post("/consumer/pause", json={"reason": "SMTP maintenance"},
                                   headers=auth)
        assert paused.status_code == 200
        assert paused.json() == {"state": "paused", "by": "operator",
                                 "reason": "SMTP maintenance", "until": None}
        assert await consumers_on(connection, POINTS.name) == 0
        waiting = events.order_paid()
        await publish(waiting)
        await eventually_async(lambda: _count_is(connection, POINTS.name, 1), timeout=5)
        assert (await client.get("/consumer")).json()["state"] == "paused"

        resumed = await client.post("/consumer/resume", headers=auth)

    assert resumed.json()["state"] == "running"
    await eventually_async(lambda: _all_applied(handler, [str(waiting.event_id)]), timeout=5)
    record = [r.getMessage() for r in caplog.records if r.name == "messaging.operator"]
    assert sum(line.startswith("operator action refused: ") for line in record) == 3
    assert f"operator action: {service} consumer paused from 127.0.0.1: SMTP maintenance" \
        in record, record
    assert f"operator action: {service} consumer resumed from 127.0.0.1" in record, record


async def test_without_an_admin_token_set_the_operator_routes_refuse_everyone(start_consumer):
    flow = FlowControl(f"ks-{uuid.uuid4().hex[:6]}", QUICK)
    app = FastAPI()
    app.include_router(consumer_router("points", flow, None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ops") as client:
        response = await client.post("/consumer/resume",
                                     headers={"Authorization": "Bearer anything-at-all-here"})
    assert response.status_code == 401
    assert "ADMIN_TOKEN is not set" in response.json()["detail"]


async def _paused_by_switch(flow: FlowControl) -> bool:
    return flow.switch.status.mode is not Mode.RUNNING


async def _running(flow: FlowControl) -> bool:
    return flow.switch.status.mode is Mode.RUNNING


async def _at_least(value: float, minimum: float) -> bool:
    return value >= minimum


async def _all_applied(handler: Dependency, ids: list[str]) -> bool:
    return all(handler.applied[i] >= 1 for i in ids)


async def _count_is(connection, queue: str, n: int) -> bool:
    return await dlq.ready_count(connection, queue) == n


async def _parked(connection, n: int):
    messages = await dlq.show(connection, "points", limit=100)
    return messages if len(messages) >= n else None
