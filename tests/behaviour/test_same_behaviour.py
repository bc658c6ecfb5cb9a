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


THANKS, SHIPPED, REFUND = "Thank you for your order", "Your order has shipped", "Your refund"


def test_a_payment_grants_points_ships_mails_twice_in_causal_order_and_audits_both_events(shop):
    response = shop.pay(amount=1250)
    assert response.status_code == 201, response.text
    paid = response.json()

    eventually(lambda: len(shop.audit(paid["order_id"])) == 2
               and len(shop.mails(paid["order_id"])) == 2
               and shop.points(paid["customer_id"])["entries"], timeout=DEADLINE,
               message="points, both mails and both audit entries")

    points = shop.points(paid["customer_id"])
    [entry] = points["entries"]
    assert (points["balance"], entry["delta"], entry["order_id"]) == (12, 12, paid["order_id"])
    records = {r["event_type"]: r for r in shop.audit(paid["order_id"])}
    assert sorted(records) == ["OrderPaid", "OrderShipped"]
    assert {r["sequence"] for r in records.values()} == {1}  # #1 of payment's, of shipping's
    assert {r["correlation_id"] for r in records.values()} == {paid["correlation_id"]}
    [shipment] = shop.shipments(paid["order_id"])
    assert shipment["status"] == "shipped"
    mails = shop.mails(paid["order_id"])
    assert [m["event_id"] for m in mails] == [records["OrderPaid"]["event_id"],
                                             records["OrderShipped"]["event_id"]]
    assert records["OrderPaid"]["event_id"] == entry["event_id"]
    delivered = eventually(lambda: d if len(d := shop.delivered(paid["email"])) == 2 else None,
                           timeout=DEADLINE)
    assert [m["Subject"] for m in delivered] == [THANKS, SHIPPED]  # as the server got them
    assert {m["X-Correlation-ID"] for m in delivered} == {paid["correlation_id"]}
    assert shipment["tracking_number"] in delivered[1].get_content()


def test_a_refund_revokes_the_points_mails_the_customer_asks_for_the_return_and_is_recorded(
    shop,
):
    paid = shop.pay(amount=3000).json()
    response = shop.refund(paid["payment_id"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "refunded"

    eventually(lambda: len(shop.audit(paid["order_id"])) == 3
               and len(shop.mails(paid["order_id"])) == 3
               and len(shop.points(paid["customer_id"])["entries"]) == 2
               and shop.shipments(paid["order_id"])[0]["status"] == "return_requested",
               timeout=DEADLINE, message="paid, shipped and refunded handled everywhere")

    points = shop.points(paid["customer_id"])
    assert points["balance"] == 0
    assert [e["delta"] for e in points["entries"]] == [30, -30]
    assert sorted(r["event_type"] for r in shop.audit(paid["order_id"])) == [
        "OrderPaid", "OrderRefunded", "OrderShipped"]
    subjects = [m["Subject"] for m in shop.delivered(paid["email"])]
    assert subjects[0] == THANKS and sorted(subjects[1:]) == [SHIPPED, REFUND]


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
    eventually(lambda: len(shop.audit(paid["order_id"])) == 3
               and len(shop.mails(paid["order_id"])) == 3
               and len(shop.points(paid["customer_id"])["entries"]) == 2,
               timeout=DEADLINE, message="the refund handled everywhere")
    assert sorted(r["event_type"] for r in shop.audit(paid["order_id"])) == [
        "OrderPaid", "OrderRefunded", "OrderShipped"]
    assert len(shop.delivered(paid["email"])) == 3
    assert len(shop.shipments(paid["order_id"])) == 1


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
    eventually(lambda: len(shop.audit(order_id)) == 2, timeout=DEADLINE,
               message="the valid payment and its shipment")
    assert sorted(r["event_type"] for r in shop.audit(order_id)) == ["OrderPaid",
                                                                     "OrderShipped"]
