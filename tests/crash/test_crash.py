"""Crash safety: each test kills a real process at a chosen point and shows the effect
still happens exactly once. (The broker restart is in tests/chaos: it disturbs everyone.)"""

from __future__ import annotations

import contextlib
import signal
import uuid

import pytest

from devstack import smtp_sink
from devstack.stack import free_port
from devstack.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SIGKILLED = -signal.SIGKILL
# Payment's windows and the mailer's shutdown, with one event per payment: shipping (and its
# OrderShipped) stays off here; its own windows are in test_shipping_crash.py.
STARTED = ("payment", "points", "mailer", "audit")


def new_customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def test_consumer_killed_after_its_commit_but_before_the_ack_applies_the_event_once(
    crash_stack,
):
    s = crash_stack
    s.start("payment", "mailer", "audit")
    s.start_crashing("points", "after-commit")
    s.stack.wait_ready(*STARTED, timeout=60)
    customer = new_customer()

    order_id = s.pay(customer, amount=1200)

    assert s.stack.wait_exit("points", timeout=60) == SIGKILLED
    # The effect committed before the kill; the message was never acked, so it is back.
    assert s.rows("points", "SELECT delta FROM ledger WHERE order_id = ?", order_id) == [(12,)]
    eventually(lambda: s.queue_messages("points.events") == 1, timeout=30,
               message="the unacked message returned to the queue")

    s.start("points")
    s.stack.wait_ready("points", timeout=60)
    eventually(lambda: s.metric("points", "messages_acked_total", outcome="duplicate") == 1,
               timeout=60, message="the redelivery was recognised as a duplicate")
    points = s.points(customer)
    assert points["balance"] == 12
    assert [e["order_id"] for e in points["entries"]] == [order_id]
    eventually(lambda: s.queue_messages("points.events") == 0, timeout=30, message="acked")


def test_relay_killed_after_publishing_but_before_marking_sent_publishes_again_with_one_effect(
    crash_stack,
):
    s = crash_stack
    s.start("points", "mailer", "audit")
    s.start_crashing("payment", "after-publish")
    s.stack.wait_ready(*STARTED, timeout=60)
    customer, order_id = new_customer(), str(uuid.uuid4())

    # The kill may beat the HTTP response; the commit came before the publish anyway.
    with contextlib.suppress(Exception):
        s.pay(customer, order_id=order_id)
    assert s.stack.wait_exit("payment", timeout=60) == SIGKILLED
    [(event_id, published_at)] = s.rows(
        "payment", "SELECT event_id, published_at FROM outbox WHERE order_id = ?", order_id)
    assert published_at is None  # confirmed by the broker, yet not marked

    s.start("payment")
    s.stack.wait_ready("payment", timeout=60)
    eventually(lambda: s.published(event_id) == 2, timeout=60,
               message="the event was published a second time")
    eventually(lambda: s.rows("payment", "SELECT published_at FROM outbox WHERE event_id = ?",
                              event_id)[0][0] is not None, timeout=30, message="marked sent")
    for service in ("points", "mailer", "audit"):
        eventually(lambda svc=service: s.metric(svc, "messages_acked_total",
                                                outcome="duplicate") == 1,
                   timeout=60, message=f"{service} skipped the second copy")
    assert s.points(customer)["balance"] == 12
    assert [m["event_id"] for m in s.mails(order_id)] == [event_id]
    assert [e["event_id"] for e in s.audit(order_id)] == [event_id]


def test_payment_killed_after_its_commit_but_before_publishing_publishes_on_restart(
    crash_stack,
):
    s = crash_stack
    s.start("points", "mailer", "audit")
    payment = s.stack.services["payment"]
    good_url = payment.env["RABBITMQ_URL"]
    payment.env["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}/"  # nobody there
    s.start("payment")
    s.wait_alive("payment")
    customer = new_customer()

    order_id = s.pay(customer)  # committed: payment row + outbox row
    s.stack.kill("payment")
    [(event_id, published_at)] = s.rows(
        "payment", "SELECT event_id, published_at FROM outbox WHERE order_id = ?", order_id)
    assert published_at is None
    assert s.published(event_id) == 0

    payment.env["RABBITMQ_URL"] = good_url
    s.start("payment")
    s.stack.wait_ready(*STARTED, timeout=60)
    eventually(lambda: s.points(customer)["balance"] == 12, timeout=60,
               message="points granted after the restart")
    eventually(lambda: len(s.mails(order_id)) == 1, timeout=60, message="mail sent")
    eventually(lambda: len(s.audit(order_id)) == 1, timeout=60, message="audit recorded")
    assert s.published(event_id) == 1


def test_sigterm_stops_consuming_finishes_or_releases_in_flight_work_and_loses_nothing(
    crash_stack, smtp
):
    """A mail server slower than the shutdown grace (10 s) holds a full prefetch (32) in
    flight when mailer is told to stop: that work is released, the rest never taken."""
    s = crash_stack
    smtp.delay_seconds = 12
    s.start(*STARTED)
    s.stack.wait_ready(*STARTED, timeout=60)
    customer = new_customer()
    orders = [s.pay(customer, amount=100) for _ in range(40)]  # more than the prefetch

    eventually(lambda: s.metric("mailer", "messages_consumed_total") >= 32, timeout=60,
               message="a full prefetch in flight")
    s.stack.signal("mailer", signal.SIGTERM)
    assert s.stack.wait_exit("mailer", timeout=60) == 0
    assert "Application shutdown complete" in s.stack.log_tail("mailer", lines=80)
    sent_at_stop = s.rows("mailer", "SELECT count(*) FROM sent_mails")[0][0]
    assert sent_at_stop < len(orders), "the test needs work left over at the stop"
    eventually(lambda: s.queue_messages("mailer.events") == len(orders) - sent_at_stop,
               timeout=30, message="everything not done is back in the queue")

    smtp.delay_seconds = 0
    s.start("mailer")
    s.stack.wait_ready("mailer", timeout=60)
    eventually(lambda: s.rows("mailer", "SELECT count(*) FROM sent_mails")[0][0] == len(orders),
               timeout=90, message="every mail recorded after the restart")
    recorded = {order for (order,) in s.rows("mailer", "SELECT order_id FROM sent_mails")}
    assert recorded == set(orders)
    received = {m["Message-ID"] for m in smtp_sink.mails_in(s.tmp / "mail")}
    expected = {mid for (mid,) in s.rows("mailer", "SELECT message_id FROM sent_mails")}
    assert received == expected
    eventually(lambda: s.queue_messages("mailer.events") == 0, timeout=30, message="drained")
