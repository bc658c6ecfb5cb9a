"""What a customer of the shop sees, the same in both modes: asynchronous (RabbitMQ, the
normal deployment) and synchronous (`python -m inprocess`, handlers inside the request).

Effects are awaited by polling: in the synchronous mode the first poll already finds them
(test_sync_mode.py proves that separately); in the asynchronous mode they arrive later.
"""

import uuid

import pytest

from devstack.wait import eventually

pytestmark = pytest.mark.e2e

DEADLINE = 30


def test_a_payment_grants_points_sends_one_mail_and_records_one_audit_entry(shop):
    response = shop.pay(amount=1250)
    assert response.status_code == 201, response.text
    paid = response.json()

    eventually(lambda: shop.audit(paid["order_id"]) and shop.mails(paid["order_id"])
               and shop.points(paid["customer_id"])["entries"], timeout=DEADLINE,
               message="points, mail and audit entry")

    points = shop.points(paid["customer_id"])
    [entry] = points["entries"]
    assert (points["balance"], entry["delta"], entry["order_id"]) == (12, 12, paid["order_id"])
    [record] = shop.audit(paid["order_id"])
    assert (record["event_type"], record["sequence"]) == ("OrderPaid", 1)
    assert record["correlation_id"] == paid["correlation_id"]
    [mail] = shop.mails(paid["order_id"])
    assert mail["event_id"] == record["event_id"] == entry["event_id"]
    [delivered] = eventually(lambda: shop.delivered(paid["email"]), timeout=DEADLINE)
    assert delivered["Subject"] == "Thank you for your order"
    assert delivered["X-Correlation-ID"] == paid["correlation_id"]


def test_a_refund_revokes_the_points_mails_the_customer_and_is_recorded(shop):
    paid = shop.pay(amount=3000).json()
    response = shop.refund(paid["payment_id"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "refunded"

    eventually(lambda: len(shop.audit(paid["order_id"])) == 2
               and len(shop.mails(paid["order_id"])) == 2
               and len(shop.points(paid["customer_id"])["entries"]) == 2,
               timeout=DEADLINE, message="paid and refunded handled everywhere")

    points = shop.points(paid["customer_id"])
    assert points["balance"] == 0
    assert [e["delta"] for e in points["entries"]] == [30, -30]
    assert [r["event_type"] for r in shop.audit(paid["order_id"])] == ["OrderPaid",
                                                                       "OrderRefunded"]
    subjects = sorted(m["Subject"] for m in shop.delivered(paid["email"]))
    assert subjects == ["Thank you for your order", "Your refund"]


def test_repeating_a_payment_with_its_idempotency_key_returns_it_and_changes_nothing(shop):
    key = f"key-{uuid.uuid4()}"
    first = shop.pay(key=key)
    paid = first.json()
    eventually(lambda: shop.mails(paid["order_id"]), timeout=DEADLINE, message="first mail")

    again = shop.pay(key=key, order_id=paid["order_id"], customer_id=paid["customer_id"],
                     email=paid["email"])
    assert again.status_code == 201, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["payment_id"] == paid["payment_id"]

    # A marker after the repeat: once the refund is handled everywhere, anything the repeat
    # had caused would have been handled too (the outbox keeps order, the handlers follow it).
    shop.refund(paid["payment_id"])
    eventually(lambda: len(shop.audit(paid["order_id"])) == 2
               and len(shop.mails(paid["order_id"])) == 2
               and len(shop.points(paid["customer_id"])["entries"]) == 2,
               timeout=DEADLINE, message="the refund handled everywhere")
    assert [r["event_type"] for r in shop.audit(paid["order_id"])] == ["OrderPaid",
                                                                       "OrderRefunded"]
    assert len(shop.delivered(paid["email"])) == 2


def test_paying_an_order_that_is_already_paid_is_a_conflict(shop):
    paid = shop.pay().json()

    again = shop.pay(order_id=paid["order_id"])

    assert again.status_code == 409
    assert paid["payment_id"] in again.json()["detail"]


def test_an_invalid_body_is_refused_with_422_naming_the_field_and_nothing_happens(shop):
    order_id = str(uuid.uuid4())
    response = shop.pay(order_id=order_id, amount=0)

    assert response.status_code == 422
    assert any(err["loc"][-1] == "amount" for err in response.json()["detail"])
    # A later valid payment of the same order goes through: the invalid one left nothing.
    paid = shop.pay(order_id=order_id)
    assert paid.status_code == 201
    eventually(lambda: shop.audit(order_id), timeout=DEADLINE, message="the valid payment")
    assert len(shop.audit(order_id)) == 1
