"""Hostile and careless messages against the real consumers (issue 17, findings 1, 2, 3, 9).

The services run as processes on one throwaway vhost (the module's stack). Each test
publishes its hostile messages straight into `shop.events`, as a careless producer or an
attacker with publish rights would, then asserts where every message ends (work queue,
DLQ, with which error class) and that a valid payment published behind them is applied
by every consumer within seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import aio_pika
import httpx
import pytest

from contracts import Money, OrderPaid, OrderRefunded, PaymentDataV2, utcnow
from devstack import events, throwaway
from devstack.smtp_sink import mails_in
from devstack.wait import eventually
from messaging import spec
from messaging.observability import telemetry
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import EXCHANGE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CONSUMERS = tuple(s.name for s in spec.consumers())  # shipping too
PREFETCH = 32  # the default: more hostile messages than this once stalled a consumer


async def _publish_all(url: str, messages: list[tuple[aio_pika.Message, str]]) -> None:
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await open_confirm_channel(connection)
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        # Untraced: when tracing is set up in this process (another test did), the aio-pika
        # instrumentation would overwrite the hostile `traceparent` with a valid one.
        with telemetry.untraced():
            await asyncio.gather(*(publish_confirmed(exchange, m, routing_key=key)
                                   for m, key in messages))
    finally:
        await connection.close()


def publish(stack, *items: tuple[bytes | OrderPaid | OrderRefunded, dict]) -> None:
    """Publish each (body or event, properties) to shop.events, confirmed."""
    messages = []
    for body, props in items:
        if isinstance(body, OrderPaid | OrderRefunded):
            props = {"message_id": str(body.event_id), "event_type": body.event_type,
                     "correlation_id": body.correlation_id} | props
            key = body.routing_key
            body = body.to_json()
        else:
            key = props.pop("routing_key", "order.paid")
        props = {"message_id": str(uuid.uuid4()), "event_type": "OrderPaid",
                 "correlation_id": "c-hostile", "timestamp": utcnow()} | props
        headers = props.pop("headers", None)
        messages.append((build_message(body, headers=headers, **props), key))
    asyncio.run(_publish_all(stack.rabbitmq_url, messages))


async def _drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect_robust(url)
    taken = []
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        while (message := await q.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
    finally:
        await connection.close()
    return taken


class DeadLetters:
    """What each consumer's DLQ received, collected across polls (draining consumes)."""

    def __init__(self, stack):
        self.stack = stack
        self.seen: dict[str, dict[str, dict]] = {s: {} for s in CONSUMERS}

    def poll(self) -> None:
        for service in CONSUMERS:
            for m in asyncio.run(_drain(self.stack.rabbitmq_url, f"{service}.events.dlq")):
                self.seen[service][m.message_id] = dict(m.headers or {})

    def classes(self, service: str, ids: list[str]) -> dict[str, str]:
        return {i: str(self.seen[service][i].get("error-class")) for i in ids
                if i in self.seen[service]}

    def wait_for(self, ids: list[str], timeout: float = 30) -> None:
        def all_there() -> bool:
            self.poll()
            return all(i in self.seen[s] for s in CONSUMERS for i in ids)
        eventually(all_there, timeout, interval=0.2, message="hostile messages in every DLQ")


def work_queues_empty(stack) -> bool:
    return all(throwaway.queue_depth(stack.vhost, f"{s}.events") == 0 for s in CONSUMERS)


def applied_everywhere(stack, paid: OrderPaid) -> bool:
    order = str(paid.order_id)
    ledger = httpx.get(f"{stack.url('points')}/customers/{paid.data.customer_id}/points",
                       timeout=5).json()
    mails = httpx.get(f"{stack.url('mailer')}/mails", params={"order_id": order}, timeout=5)
    audit = httpx.get(f"{stack.url('audit')}/events", params={"order_id": order}, timeout=5)
    shipments = httpx.get(f"{stack.url('shipping')}/shipments", params={"order_id": order},
                          timeout=5)
    # The thank-you and the shipped mail; OrderPaid and OrderShipped audited; one shipment.
    return (any(e["order_id"] == order for e in ledger["entries"])
            and len(mails.json()) == 2 and len(audit.json()) == 2
            and len(shipments.json()) == 1)


def assert_valid_payment_behind_is_applied(stack, within: float = 10) -> OrderPaid:
    paid = events.order_paid(customer_id=f"c{uuid.uuid4().hex[:8]}")
    publish(stack, (paid, {}))
    eventually(lambda: applied_everywhere(stack, paid), within, interval=0.2,
               message="the valid payment behind the hostile messages applied")
    return paid


def metric(stack, service: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.url(service)}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def mails_of(stack, order_id) -> list:
    return [m for m in mails_in(stack.mail_dir) if str(order_id) in m.get_content()]


def subjects_of(stack, order_id) -> list[str]:
    """The subjects of the order's mails the SMTP server got, sorted: one thank-you and one
    shipped mail when nothing went wrong."""
    return sorted(str(m["Subject"]) for m in mails_of(stack, order_id))


ONE_EACH = ["Thank you for your order", "Your order has shipped"]


# Finding 3: headers that made the retry/DLQ copy fail stalled the consumer.

@pytest.mark.parametrize("headers", [
    {"retry-attempt": 1e38}, {"deferrals": 1e38}, {"retry-attempt": "3"},
    {"retry-attempt": -1}, {"deferrals": True}, {"retry-attempt": 10**12},
    {"unexpected-header": "x"}, {"traceparent": 42},
], ids=lambda h: ",".join(f"{k}={v!r}" for k, v in h.items()))
def test_a_message_with_unexpected_headers_is_poison_and_never_stalls_a_consumer(stack, headers):
    # More than a prefetch's worth, each a valid event otherwise, so only the headers are bad.
    hostile = [events.order_paid() for _ in range(PREFETCH + 4)]
    publish(stack, *((event, {"headers": headers}) for event in hostile))

    assert_valid_payment_behind_is_applied(stack)
    dlq = DeadLetters(stack)
    ids = [str(e.event_id) for e in hostile]
    dlq.wait_for(ids)
    for service in CONSUMERS:
        assert set(dlq.classes(service, ids).values()) == {"poison"}, service
    eventually(lambda: work_queues_empty(stack), 10, message="work queues drained")
    for event in hostile:  # none of them had an effect
        assert mails_of(stack, event.order_id) == []
    for service in CONSUMERS:
        ready = httpx.get(f"{stack.url(service)}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text


# Finding 9 (envelope): poison at once, not four transient attempts.

# Issue 27, finding 4: an instant past the contract's window (the mailer's Date header
# failed on it, as transient, four times, then parked it as exhausted).

@pytest.mark.parametrize("changes", [
    {"occurred_at": "9999-12-31T23:59:59-23:59"},
    {"occurred_at": "9999-12-31T23:59:59.999999Z"},
    {"occurred_at": "1970-01-01T00:00:00Z"},
    {"correlation_id": "c-1\r\nBcc: victim@example.com"},
], ids=["occurred_at-overflows", "occurred_at-past-the-window", "occurred_at-before-the-window",
        "correlation_id-crlf"])
def test_an_envelope_that_parses_but_cannot_be_handled_is_poison_at_once(stack, changes):
    body = json.loads(events.order_paid().to_json()) | changes
    message_id = body["event_id"]
    publish(stack, (json.dumps(body).encode(), {"message_id": message_id}))

    dlq = DeadLetters(stack)
    dlq.wait_for([message_id], timeout=5)  # well before the first retry delay (1 s) x 4
    for service in CONSUMERS:
        headers = dlq.seen[service][message_id]
        assert headers["error-class"] == "poison" and headers["error-attempts"] == 1
    assert_valid_payment_behind_is_applied(stack)


# Finding 2: a refund with sequence 1 made the genuine payment "stale", silently.

def test_a_refund_as_first_event_is_poison_and_the_real_payment_is_still_applied(stack):
    paid = events.order_paid(customer_id=f"r{uuid.uuid4().hex[:8]}")
    fake = OrderRefunded.model_construct(**{**dict(paid), "event_id": uuid.uuid4(),
                                            "event_type": "OrderRefunded", "sequence": 1})
    publish(stack, (fake.to_json(), {"message_id": str(fake.event_id),
                                     "event_type": "OrderRefunded",
                                     "routing_key": "order.refunded"}))
    dlq = DeadLetters(stack)
    dlq.wait_for([str(fake.event_id)])
    assert all(dlq.classes(s, [str(fake.event_id)]) == {str(fake.event_id): "poison"}
               for s in CONSUMERS)

    publish(stack, (paid, {}))
    eventually(lambda: applied_everywhere(stack, paid), 10, interval=0.2,
               message="the genuine OrderPaid #1 applied")
    assert subjects_of(stack, paid.order_id) == ONE_EACH
def test_two_different_events_claiming_one_place_in_an_order_are_a_conflict(stack):
    first = events.order_paid(customer_id=f"k{uuid.uuid4().hex[:8]}")
    rival = first.model_copy(update={
        "event_id": uuid.uuid4(),
        "data": PaymentDataV2(**{**dict(first.data), "amount": Money(value=1, currency="JPY")})})
    before = {s: metric(stack, s, "messages_dead_lettered_total", error_class="conflict")
              for s in CONSUMERS}
    publish(stack, (first, {}))
    eventually(lambda: applied_everywhere(stack, first), 10, interval=0.2,
               message="the first OrderPaid #1 applied")
    publish(stack, (rival, {}))

    dlq = DeadLetters(stack)
    dlq.wait_for([str(rival.event_id)])
    for service in CONSUMERS:
        headers = dlq.seen[service][str(rival.event_id)]
        assert headers["error-class"] == "conflict", service
        assert str(first.event_id) in headers["error-message"]
        assert metric(stack, service, "messages_dead_lettered_total",
                      error_class="conflict") == before[service] + 1
    assert subjects_of(stack, first.order_id) == ONE_EACH  # the rival's mailed nothing
    ledger = httpx.get(f"{stack.url('points')}/customers/{first.data.customer_id}/points",
                       timeout=5).json()
    assert len(ledger["entries"]) == 1  # the rival granted nothing


def test_the_same_event_id_with_other_content_is_logged_and_counted(stack):
    paid = events.order_paid(customer_id=f"d{uuid.uuid4().hex[:8]}")
    forged = paid.model_copy(update={
        "data": PaymentDataV2(**{**dict(paid.data), "amount": Money(value=7, currency="JPY")})})
    before = {s: metric(stack, s, "inbox_event_id_clashes_total") for s in CONSUMERS}
    publish(stack, (paid, {}))
    eventually(lambda: applied_everywhere(stack, paid), 10, interval=0.2,
               message="the OrderPaid applied")
    publish(stack, (forged, {}))
    eventually(lambda: all(metric(stack, s, "inbox_event_id_clashes_total") == before[s] + 1
                           for s in CONSUMERS), 10, interval=0.2,
               message="the clash counted by every consumer")
    log = stack.log_tail("points", 200)
    assert re.search(rf"event id clash.*{paid.event_id}", log), log
    assert subjects_of(stack, paid.order_id) == ONE_EACH


# Finding 1: two copies in flight made two mails.

@pytest.mark.parametrize("copies", [2, 30])
def test_copies_of_one_event_in_flight_at_once_send_one_mail(stack, copies):
    paid = events.order_paid(customer_id=f"m{uuid.uuid4().hex[:8]}")
    publish(stack, *((paid, {}) for _ in range(copies)))
    eventually(lambda: applied_everywhere(stack, paid), 20, interval=0.2,
               message="the payment applied")
    eventually(lambda: work_queues_empty(stack)
               and throwaway.queue_depth(stack.vhost, "mailer.events") == 0, 30,
               interval=0.2, message="every copy settled")
    # Copies that waited for the first one's outcome come back from a retry queue: wait
    # until none is left anywhere, then count the mails.
    eventually(lambda: all(throwaway.queue_depth(stack.vhost, q) == 0 for q in
                           ("mailer.events", "mailer.events.retry.1s",
                            "mailer.events.retry.5s")), 30, interval=0.2,
               message="no copy waiting in a retry queue")
    assert subjects_of(stack, paid.order_id) == ONE_EACH
    assert len(httpx.get(f"{stack.url('mailer')}/mails", params={"order_id": str(paid.order_id)},
                         timeout=5).json()) == 2


def test_copies_spread_over_two_mailer_instances_send_one_mail(tmp_path):
    """Competing consumers: two mailer processes on one queue and one PostgreSQL database."""
    import os
    import subprocess
    import sys
    import time

    from devstack import smtp_sink
    from devstack.stack import free_port, wait_until_ready

    smtp_port = free_port()
    controller, _ = smtp_sink.start(tmp_path / "mail", port=smtp_port)
    name, db_url = throwaway.create_postgres_database("mail2")
    try:
        with throwaway.throwaway_vhost("mail2") as (vhost, amqp_url):
            procs = []
            try:
                for i in range(2):
                    port = free_port()
                    log = open(tmp_path / f"mailer{i}.log", "ab")  # noqa: SIM115
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "mailer"], stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PORT": str(port), "RABBITMQ_URL": amqp_url,
                             "DATABASE_URL": db_url, "SMTP_HOST": "127.0.0.1",
                             "SMTP_PORT": str(smtp_port), "PREFETCH": "8"})
                    procs.append(proc)
                    wait_until_ready("mailer", f"http://127.0.0.1:{port}", proc,
                                     tmp_path / f"mailer{i}.log", time.monotonic() + 30)

                class _Stack:
                    rabbitmq_url = amqp_url

                paid = events.order_paid(customer_id=f"two{uuid.uuid4().hex[:6]}")
                publish(_Stack, *((paid, {}) for _ in range(20)))
                eventually(lambda: mails_in(tmp_path / "mail"), 15, message="the mail sent")
                eventually(lambda: all(throwaway.queue_depth(vhost, q) == 0 for q in
                                       ("mailer.events", "mailer.events.retry.1s",
                                        "mailer.events.retry.5s")), 40, interval=0.2,
                           message="every copy settled")
                assert len(mails_in(tmp_path / "mail")) == 1
                assert throwaway.queue_depth(vhost, "mailer.events.dlq") == 0
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    finally:
        controller.stop()
        throwaway.drop_postgres_database(name)
