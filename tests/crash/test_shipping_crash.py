"""Crash safety of a consumer that publishes: shipping SIGKILLed at its two windows. Each
time: one shipment, one OrderShipped row, and one OrderShipped effect downstream (one
shipped mail, one audit record)."""

from __future__ import annotations

import signal
import uuid

import pytest

from devstack.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SIGKILLED = -signal.SIGKILL


def new_customer() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def shipped_rows(s, order_id: str) -> list[tuple]:
    return s.rows("shipping", "SELECT event_id, published_at FROM outbox WHERE order_id = ?",
                  order_id)


def downstream_has_one_shipment_effect(s, order_id: str, shipped_id: str) -> None:
    """One shipment; mailer sent the two mails of the order once each, the shipped one after
    the thank-you one; audit holds OrderPaid and OrderShipped once each."""
    assert len(s.rows("shipping", "SELECT shipment_id FROM shipments WHERE order_id = ?",
                      order_id)) == 1
    mails = eventually(lambda: s.mails(order_id) if len(s.mails(order_id)) == 2 else None,
                       timeout=60, message="both mails recorded")
    assert [m["subject"] for m in mails] == ["Thank you for your order",
                                            "Your order has shipped"]
    assert mails[1]["event_id"] == shipped_id
    records = eventually(lambda: s.audit(order_id) if len(s.audit(order_id)) == 2 else None,
                         timeout=60, message="both events audited")
    assert sorted(r["event_type"] for r in records) == ["OrderPaid", "OrderShipped"]


def test_shipping_killed_after_its_commit_before_the_ack_ships_once_and_publishes_once(
    crash_stack,
):
    s = crash_stack
    s.start("payment", "points", "mailer", "audit")
    s.start_crashing("shipping", "after-commit")
    s.stack.wait_ready(timeout=60)
    order_id = s.pay(new_customer())

    assert s.stack.wait_exit("shipping", timeout=60) == SIGKILLED
    # Shipment, OrderShipped row and inbox record committed together; nothing acked or sent.
    [(shipped_id, published_at)] = shipped_rows(s, order_id)
    assert published_at is None
    eventually(lambda: s.queue_messages("shipping.events") == 1, timeout=30,
               message="the unacked OrderPaid returned to shipping's queue")

    s.start("shipping")
    s.stack.wait_ready("shipping", timeout=60)
    eventually(lambda: s.metric("shipping", "messages_acked_total", outcome="duplicate") == 1,
               timeout=60, message="the redelivered OrderPaid was a duplicate")
    eventually(lambda: shipped_rows(s, order_id)[0][1] is not None, timeout=30,
               message="the staged OrderShipped relayed after the restart")
    assert [r[0] for r in shipped_rows(s, order_id)] == [shipped_id]
    assert s.published(shipped_id) == 1
    downstream_has_one_shipment_effect(s, order_id, shipped_id)


def test_shippings_relay_killed_after_the_confirm_before_marking_sent_has_one_effect(
    crash_stack,
):
    s = crash_stack
    s.start("payment", "points", "mailer", "audit")
    s.start_crashing("shipping", "after-publish")
    s.stack.wait_ready(timeout=60)
    order_id = s.pay(new_customer())

    assert s.stack.wait_exit("shipping", timeout=60) == SIGKILLED
    [(shipped_id, published_at)] = shipped_rows(s, order_id)
    assert published_at is None  # confirmed by the broker, yet not marked

    s.start("shipping")
    s.stack.wait_ready("shipping", timeout=60)
    eventually(lambda: s.published(shipped_id) == 2, timeout=60,
               message="OrderShipped was published a second time")
    eventually(lambda: shipped_rows(s, order_id)[0][1] is not None, timeout=30,
               message="marked sent")
    for service in ("mailer", "audit"):
        eventually(lambda svc=service: s.metric(svc, "messages_acked_total",
                                                outcome="duplicate",
                                                event_type="OrderShipped") == 1,
                   timeout=60, message=f"{service} skipped the second copy")
    # Points has no handler for it: both copies acked as ignored, none dead-lettered.
    eventually(lambda: s.metric("points", "messages_ignored_total",
                                event_type="OrderShipped") == 2, timeout=30,
               message="points ignored both copies")
    assert s.queue_messages("points.events.dlq") == 0
    downstream_has_one_shipment_effect(s, order_id, shipped_id)
