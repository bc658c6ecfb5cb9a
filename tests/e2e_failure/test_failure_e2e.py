"""Failures across processes: a mail server that is down for a while, a broker that is out of
reach when an order is paid, and a message that kills its consumer every time."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import httpx
import pytest

from devstack import events, throwaway
from devstack.scrape import metric
from devstack.smtp_sink import mails_in
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually
from messaging.operations import dlq
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import QueueTopology, declare_exchange

pytestmark = pytest.mark.e2e

CRASHING_CONSUMER = Path(__file__).with_name("crashing_consumer.py")


def pay(url: str, customer: str | None = None) -> dict:
    response = httpx.post(f"{url}/payments", timeout=10, json={
        "order_id": str(uuid.uuid4()), "customer_id": customer or f"c-{uuid.uuid4().hex[:8]}",
        "email": "buyer@example.com", "amount": 1200, "currency": "JPY"})
    assert response.status_code == 201, response.text
    return response.json()


def get(url: str, path: str, **params):
    return httpx.get(f"{url}{path}", params=params, timeout=10).json()


def test_mail_server_down_for_seconds_then_back_sends_every_mail_exactly_once(stack):
    mailer = stack.url("mailer")
    retried_before = metric(mailer, "messages_retried_total", service="mailer")
    stack.smtp.fail_until = time.monotonic() + 4  # 451 to every mail for the next 4 s

    payments = [pay(stack.url("payment")) for _ in range(5)]

    # Each order's two mails (thank-you, then shipped), whatever was refused in between.
    for p in payments:
        eventually(lambda p=p: len(get(mailer, "/mails", order_id=p["order_id"])) == 2,
                   timeout=60, message=f"both mails for {p['order_id']}")
    assert metric(mailer, "messages_retried_total", service="mailer") > retried_before
    sent_ids = [m["message_id"] for p in payments
                for m in get(mailer, "/mails", order_id=p["order_id"])]
    # Nothing for these orders is left in flight, so no later copy can still arrive.
    eventually(lambda: _queues_empty(stack.vhost, QueueTopology.for_service("mailer")),
               timeout=60, message="mailer queues drained")
    on_the_wire = [m["Message-ID"] for m in mails_in(stack.mail_dir)]
    for message_id in sent_ids:
        assert on_the_wire.count(message_id) == 1, message_id
    for p in payments:
        subjects = [m["subject"] for m in get(mailer, "/mails", order_id=p["order_id"])]
        assert subjects == ["Thank you for your order", "Your order has shipped"]


def _queues_empty(vhost: str, topology: QueueTopology) -> bool:
    names = [topology.name, *(topology.retry_queue(d) for d in topology.retry_delays)]
    return all(throwaway.queue_depth(vhost, name) == 0 for name in names)


def test_a_payment_taken_while_the_broker_is_unreachable_is_delivered_once_it_is_back(
    stack, broker_gate, tmp_path
):
    # A second payment service, in the stack's vhost but through a port that refuses
    # connections: for it the broker is down. The shared broker keeps running.
    offline = Stack(
        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{broker_gate.port}/{stack.vhost}",
        database_urls={s: f"sqlite+aiosqlite:///{tmp_path}/{s}.db" for s in SERVICES},
        smtp_port=free_port(),  # unused: only payment runs
        ports={s: free_port() for s in SERVICES},
        log_dir=tmp_path,
    )
    offline.start("payment")
    try:
        url = offline.url("payment")
        eventually(lambda: _answers(f"{url}/healthz"), timeout=40, message="payment up")
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503

        payment = pay(url)  # 201: the outbox holds the event

        assert _unpublished(tmp_path / "payment.db") == 1
        broker_gate.open()  # the broker is back
        records = eventually(lambda: r if len(r := get(stack.url("audit"), "/events",
                                                         order_id=payment["order_id"])) == 2
                             else None,
                             timeout=60, message="event delivered after the broker came back")
        # And shipping, which got it too, shipped: its OrderShipped followed.
        assert sorted(r["event_type"] for r in records) == ["OrderPaid", "OrderShipped"]
        ledger = eventually(lambda: get(stack.url("points"),
                                        f"/customers/{payment['customer_id']}/points")["entries"],
                            timeout=30)
        assert [e["order_id"] for e in ledger] == [payment["order_id"]]
        eventually(lambda: _unpublished(tmp_path / "payment.db") == 0, timeout=30)
    finally:
        offline.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _unpublished(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]


def test_a_message_that_kills_its_consumer_every_time_ends_in_the_dlq_and_the_queue_flows_on(
    vhost, tmp_path
):
    name, url = vhost
    crash = events.order_paid(customer_id="crash")
    good = events.order_paid()
    asyncio.run(_declare_and_publish(url, [crash, good]))
    processed = tmp_path / "processed.txt"

    kills = 0
    consumer = None
    try:
        for _ in range(15):
            consumer = subprocess.Popen([sys.executable, str(CRASHING_CONSUMER), url,
                                         str(processed)])
            eventually(lambda c=consumer: c.poll() is not None or _lines(processed),
                       timeout=60, message="consumer died or processed the good event")
            if consumer.poll() is None:
                break
            assert consumer.returncode == -signal.SIGKILL
            kills += 1
        assert _lines(processed) == [str(good.event_id)]
    finally:
        if consumer is not None and consumer.poll() is None:
            consumer.send_signal(signal.SIGTERM)
            consumer.wait(30)

    print(f"dead-lettered by the delivery limit after {kills} kills")
    assert kills >= 2  # redelivered after the crash, not dropped
    [parked] = asyncio.run(_show(url))
    assert parked.message_id == str(crash.event_id)
    text = dlq.describe(parked)
    assert "dead-lettered by the broker: delivery_limit from points.events" in text


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def _declare_and_publish(url: str, evts) -> None:
    connection = await aio_pika.connect(url)
    channel = await open_confirm_channel(connection)
    exchange = await declare_exchange(channel)
    await QueueTopology.for_service("points").declare(channel)
    for e in evts:
        message = build_message(e.to_json(), message_id=str(e.event_id),
                                correlation_id=e.correlation_id, event_type=e.event_type,
                                timestamp=e.occurred_at)
        await publish_confirmed(exchange, message, routing_key=e.routing_key)
    await connection.close()


async def _show(url: str):
    connection = await aio_pika.connect(url)
    try:
        return await dlq.show(connection, "points")
    finally:
        await connection.close()
