"""Issue 26, point 4: mixed versions in flight, against the real broker (the services as
processes, devstack's Stack) and in the synchronous mode. Every scenario ends with 0 lost,
0 duplicated, 0 parked: each order's effects exactly once, every DLQ, work and retry queue
empty. docs/evolution.md."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid

import aio_pika
import httpx
import pytest

from conftest import start_stack
from contracts import WireEvent, utcnow
from devstack import events, smtp_sink, throwaway
from devstack.stack import SERVICES, free_port
from devstack.syncmode import SyncShop
from devstack.wait import eventually
from messaging import spec
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import EXCHANGE, QueueTopology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CONSUMERS = tuple(s.name for s in spec.consumers())
# The first retry waits long enough that an early event is still in a retry queue when the
# consumers stop (scenario 2); short enough that the whole module takes seconds.
RETRY_DELAYS = (4, 5)
THANKS, SHIPPED, REFUND = "Thank you for your order", "Your order has shipped", "Your refund"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evolution")
    port = free_port()
    controller, _ = smtp_sink.start(tmp / "mail", port=port)
    with throwaway.throwaway_vhost("evolution") as (name, url):
        running = start_stack(tmp, url, port,
                              RETRY_DELAYS=",".join(str(d) for d in RETRY_DELAYS))
        running.vhost = name
        try:
            yield running
        finally:
            running.stop()
            controller.stop()


def publish(stack, *bodies: tuple[bytes, WireEvent]) -> None:
    """Publish each body (of the event it says) to shop.events, confirmed: a producer of a
    newer or older release than the consumers."""

    async def run() -> None:
        connection = await aio_pika.connect_robust(stack.rabbitmq_url)
        try:
            channel = await open_confirm_channel(connection)
            exchange = await channel.get_exchange(EXCHANGE)
            for body, event in bodies:
                message = build_message(body, message_id=str(event.event_id),
                                        correlation_id=event.correlation_id,
                                        event_type=event.event_type, timestamp=utcnow())
                await publish_confirmed(exchange, message, routing_key=event.routing_key)
        finally:
            await connection.close()

    asyncio.run(run())


def get(stack, service: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{stack.url(service)}{path}", params=params, timeout=5)


def effects(stack, order_id: str, customer_id: str) -> dict:
    """What every consumer holds of one order: points in the order granted, mails in the
    order sent (the shipped and the refund mail each follow the thank-you, in either
    order between them), the audit trail's events."""
    ledger = get(stack, "points", f"/customers/{customer_id}/points").json()
    subjects = [m["subject"] for m in get(stack, "mailer", "/mails", order_id=order_id).json()]
    return {
        "points": [e["delta"] for e in ledger["entries"] if e["order_id"] == order_id],
        "mails": subjects[:1] + sorted(subjects[1:]),  # the thank-you first
        "audit": sorted((r["event_type"], r["sequence"])
                        for r in get(stack, "audit", "/events", order_id=order_id).json()),
        "shipments": [s["status"] for s in
                      get(stack, "shipping", "/shipments", order_id=order_id).json()],
    }


def paid_effects(points: int) -> dict:
    return {"points": [points], "mails": [THANKS, SHIPPED],
            "audit": [("OrderPaid", 1), ("OrderShipped", 1)], "shipments": ["shipped"]}


def refunded_effects(points: int) -> dict:
    """Paid, then refunded: each effect once, the refund's after the payment's."""
    return {"points": [points, -points], "mails": sorted([THANKS, SHIPPED, REFUND]),
            "audit": [("OrderPaid", 1), ("OrderRefunded", 2), ("OrderShipped", 1)],
            "shipments": ["return_requested"]}


def queues(kind: str) -> list[str]:
    topologies = [QueueTopology.for_service(s, RETRY_DELAYS) for s in CONSUMERS]
    if kind == "work":
        return [t.name for t in topologies]
    if kind == "retry":
        return [t.retry_queue(d) for t in topologies for d in RETRY_DELAYS]
    return [t.dlq for t in topologies]


def depths(stack, names: list[str]) -> list[int]:
    """Ready messages of each queue, by a passive declare: exact at once (the management
    API's counts lag by seconds)."""

    async def run() -> list[int]:
        connection = await aio_pika.connect_robust(stack.rabbitmq_url)
        try:
            channel = await connection.channel()
            found = []
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                found.append(queue.declaration_result.message_count or 0)
            return found
        finally:
            await connection.close()

    return asyncio.run(run())


def depth(stack, kind: str) -> int:
    return sum(depths(stack, queues(kind)))


def assert_nothing_parked_or_left(stack) -> None:
    eventually(lambda: depth(stack, "work") + depth(stack, "retry") == 0, 20, interval=0.2,
               message="every work and retry queue drained")
    assert depths(stack, queues("dlq")) == [0] * len(CONSUMERS)


def pay(stack, amount: int) -> dict:
    body = {"order_id": str(uuid.uuid4()), "customer_id": f"e{uuid.uuid4().hex[:10]}",
            "email": f"ev-{uuid.uuid4().hex[:8]}@example.com", "amount": amount,
            "currency": "JPY"}
    response = httpx.post(f"{stack.url('payment')}/payments", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def with_unknown_fields(event: WireEvent) -> bytes:
    """The body a newer producer sends: a field in the envelope and one in `data` that no
    consumer of this release knows."""
    body = json.loads(event.to_json())
    body["channel"] = {"kind": "web", "campaign": "winter"}
    body["data"]["payment_method"] = "card"
    return json.dumps(body).encode()


def test_fields_added_by_a_newer_producer_are_read_by_every_consumer_and_never_parked(stack):
    """Scenario 1: the consumers know nothing of the added fields, of either version."""
    v1 = [events.order_paid_v1(customer_id=f"a{uuid.uuid4().hex[:8]}", amount=1000 + i)
          for i in range(3)]
    v2 = [events.order_paid(customer_id=f"b{uuid.uuid4().hex[:8]}", amount=2000 + i)
          for i in range(3)]
    publish(stack, *((with_unknown_fields(e), e) for e in v1 + v2))

    for event in v1 + v2:
        order, customer = str(event.order_id), event.data.customer_id
        eventually(lambda o=order, c=customer: effects(stack, o, c) == paid_effects(
            (1000 if o in {str(e.order_id) for e in v1} else 2000) // 100), 20,
            interval=0.2, message=f"order {order} applied once by every consumer")
    assert_nothing_parked_or_left(stack)

    # The audit trail keeps the whole event: the added fields as they came.
    for event in v1 + v2:
        body = get(stack, "audit", f"/events/{event.event_id}").json()["body"]
        assert body["channel"] == {"kind": "web", "campaign": "winter"}
        assert body["data"]["payment_method"] == "card"
        assert body["version"] == 2  # as the handlers read it: version 1 upcast


def test_consumers_upgraded_while_version_1_events_wait_apply_everything_once_in_order(stack):
    """Scenario 2: payment publishes version 1; refunds that came before their payments wait
    in the retry queues, payments in the work queues, while the consumers are replaced;
    then payment switches to version 2. Everything is applied once, each order in order."""
    # Refunds first: every consumer defers them to its first retry queue (they wait there).
    early = [events.order_paid_v1(customer_id=f"r{uuid.uuid4().hex[:8]}", amount=3000)
             for _ in range(3)]
    refunds = [events.order_refunded(p) for p in early]
    publish(stack, *((r.to_json(), r) for r in refunds))
    first_wait = [QueueTopology.for_service(s, RETRY_DELAYS).retry_queue(RETRY_DELAYS[0])
                  for s in CONSUMERS]
    eventually(lambda: depths(stack, first_wait) == [len(refunds)] * len(first_wait), 10,
               interval=0.1,
               message="the early refunds waiting in every consumer's retry queue")

    # The old consumers go; version 1 events pile up behind them.
    for name in CONSUMERS:
        stack.signal(name)
    for name in CONSUMERS:
        assert stack.wait_exit(name) == 0
    assert depth(stack, "retry") > 0  # still waiting while no consumer runs
    publish(stack, *((p.to_json(), p) for p in early))  # their payments, version 1
    v1_paid = [pay(stack, 4000) for _ in range(3)]  # payment at ORDER_PAID_VERSION=1
    eventually(lambda: min(depths(stack, queues("work"))) >= len(early) + len(v1_paid), 10,
               interval=0.1,
               message="the version 1 payments queued for every consumer")

    # The producer goes to version 2 (after its readers, as docs/evolution.md says).
    stack.signal("payment")
    assert stack.wait_exit("payment") == 0
    stack.services["payment"].env["ORDER_PAID_VERSION"] = "2"
    stack.start("payment")
    stack.wait_ready("payment")
    v2_paid = [pay(stack, 5000) for _ in range(3)]

    # The new consumers start on the mixed queues.
    stack.start(*CONSUMERS)
    stack.wait_ready(*CONSUMERS)

    for refund in refunds:
        order, customer = str(refund.order_id), refund.data.customer_id
        eventually(lambda o=order, c=customer: effects(stack, o, c) == refunded_effects(30),
                   30, interval=0.2, message=f"order {order}: paid, then refunded, once")
    for paid, points in [(p, 40) for p in v1_paid] + [(p, 50) for p in v2_paid]:
        eventually(lambda p=paid, n=points: effects(stack, p["order_id"], p["customer_id"])
                   == paid_effects(n), 20, interval=0.2,
                   message=f"order {paid['order_id']} applied once")
    assert_nothing_parked_or_left(stack)


@pytest.mark.parametrize("version", [1, 2])
def test_the_synchronous_mode_upcasts_with_the_same_upcasters(tmp_path, version):
    """Scenario 3: payment hands version 1 or 2 to the in-process dispatcher; the handlers
    see version 2 either way, as the consumers do."""
    smtp_port = free_port()
    controller, _ = smtp_sink.start(tmp_path / "mail", port=smtp_port)
    shop = SyncShop(
        database_urls={s: f"sqlite+aiosqlite:///{tmp_path}/{s}.db" for s in SERVICES},
        smtp_port=smtp_port, ports={s: free_port() for s in SERVICES},
        log_path=tmp_path / "inprocess.log",
        extra_env={"ORDER_PAID_VERSION": str(version)})
    shop.start()
    try:
        shop.wait_ready(timeout=40)
        paid = pay(shop, 1250)
        refund = httpx.post(f"{shop.url('payment')}/payments/{paid['payment_id']}/refund",
                            timeout=10)
        assert refund.status_code == 200, refund.text
        # No waiting: the handlers ran in the requests.
        assert effects(shop, paid["order_id"], paid["customer_id"]) == refunded_effects(12)
        [record] = [r for r in get(shop, "audit", "/events", order_id=paid["order_id"]).json()
                    if r["event_type"] == "OrderPaid"]
        body = get(shop, "audit", f"/events/{record['event_id']}").json()["body"]
        assert body["version"] == 2
        assert body["data"]["amount"] == {"value": 1250, "currency": "JPY"}
    finally:
        shop.stop()
        controller.stop()
    # What payment staged is the version it was told to publish.
    with sqlite3.connect(tmp_path / "payment.db") as db:
        [(staged,)] = db.execute("SELECT body FROM outbox WHERE event_type = 'OrderPaid'")
    assert json.loads(staged)["version"] == version
