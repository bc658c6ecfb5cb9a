"""End to end over the real stack: payment -> RabbitMQ -> points, mailer, audit, shipping
-> (OrderShipped, from shipping's outbox) -> mailer, audit; every service a process."""

import uuid

import httpx
import pytest

from devstack.smtp_sink import mails_in
from devstack.wait import eventually

pytestmark = pytest.mark.e2e


def pay(stack, order_id=None, key=None, **changes) -> httpx.Response:
    body = {"order_id": str(order_id or uuid.uuid4()), "customer_id": f"c-{uuid.uuid4().hex[:8]}",
            "email": "buyer@example.com", "amount": 1250, "currency": "JPY"} | changes
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{stack.url('payment')}/payments", json=body, headers=headers, timeout=10)


def ledger(stack, customer_id) -> dict:
    return httpx.get(f"{stack.url('points')}/customers/{customer_id}/points", timeout=10).json()


def mails(stack, order_id) -> list:
    response = httpx.get(f"{stack.url('mailer')}/mails", params={"order_id": order_id}, timeout=10)
    return response.json()


def audit(stack, order_id) -> list:
    response = httpx.get(f"{stack.url('audit')}/events", params={"order_id": order_id}, timeout=10)
    return response.json()


def shipments(stack, order_id) -> list:
    response = httpx.get(f"{stack.url('shipping')}/shipments", params={"order_id": order_id},
                         timeout=10)
    return response.json()


def all_done(stack, payment) -> bool:
    """Points, the shipment, both mails and both audit records of a payment."""
    return bool(ledger(stack, payment["customer_id"])["entries"]
                and shipments(stack, payment["order_id"])
                and len(mails(stack, payment["order_id"])) == 2
                and len(audit(stack, payment["order_id"])) == 2)


def test_each_payment_yields_one_ledger_entry_one_shipment_two_mails_and_two_audit_records(
    stack,
):
    payments = [pay(stack).json() for _ in range(5)]
    for p in payments:
        eventually(lambda p=p: all_done(stack, p), timeout=30, message="all effects")

    for p in payments:
        points = ledger(stack, p["customer_id"])
        assert points["balance"] == 12
        assert [e["order_id"] for e in points["entries"]] == [p["order_id"]]
        [shipment] = shipments(stack, p["order_id"])
        assert shipment["status"] == "shipped"
        thanks, shipped = mails(stack, p["order_id"])
        assert (thanks["subject"], shipped["subject"]) == ("Thank you for your order",
                                                          "Your order has shipped")
        assert thanks["to"] == shipped["to"] == "buyer@example.com"
        records = {r["event_type"]: r for r in audit(stack, p["order_id"])}
        assert sorted(records) == ["OrderPaid", "OrderShipped"]
        assert {r["correlation_id"] for r in records.values()} == {p["correlation_id"]}
        assert records["OrderPaid"]["event_id"] == thanks["event_id"] == (
            points["entries"][0]["event_id"])
        assert records["OrderShipped"]["event_id"] == shipped["event_id"]
    sent = {m["Message-ID"]: m for m in mails_in(stack.mail_dir)}
    for p in payments:
        for mail in mails(stack, p["order_id"]):
            assert sent[mail["message_id"]]["X-Correlation-ID"] == p["correlation_id"]


def test_a_payment_answers_201_with_the_payment_and_its_correlation_id(stack):
    response = pay(stack, amount=1200, currency="jpy")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "paid" and body["amount"] == 1200 and body["currency"] == "JPY"
    assert response.headers["X-Correlation-ID"] == body["correlation_id"]
    fetched = httpx.get(f"{stack.url('payment')}/payments/{body['payment_id']}").json()
    assert fetched == body


def test_a_given_correlation_id_is_kept_and_a_bad_one_replaced(stack):
    order_id = uuid.uuid4()
    good = httpx.post(f"{stack.url('payment')}/payments",
                      headers={"X-Correlation-ID": "trace-me-42"},
                      json={"order_id": str(order_id), "customer_id": "cid", "amount": 500,
                            "email": "a@example.com", "currency": "EUR"})
    assert good.json()["correlation_id"] == "trace-me-42"
    bad = httpx.post(f"{stack.url('payment')}/payments", headers={"X-Correlation-ID": "bad id!"},
                     json={"order_id": str(uuid.uuid4()), "customer_id": "cid", "amount": 500,
                           "email": "a@example.com", "currency": "EUR"})
    assert bad.headers["X-Correlation-ID"] != "bad id!"
    uuid.UUID(bad.headers["X-Correlation-ID"])


def test_a_repeated_post_with_the_same_idempotency_key_creates_nothing_new(stack):
    order_id, key = uuid.uuid4(), f"key-{uuid.uuid4()}"
    first = pay(stack, order_id=order_id, key=key, customer_id="idem")
    eventually(lambda: all_done(stack, first.json()), timeout=30, message="effects")
    balance_before = ledger(stack, "idem")["balance"]

    second = pay(stack, order_id=order_id, key=key, customer_id="idem")

    assert second.status_code == 201
    assert second.json()["payment_id"] == first.json()["payment_id"]
    # A later payment is the fence: once it is through, a stray duplicate would be too.
    fence = pay(stack).json()
    eventually(lambda: all_done(stack, fence), timeout=30, message="fence processed")
    assert ledger(stack, "idem")["balance"] == balance_before
    assert len(mails(stack, str(order_id))) == 2
    assert len(audit(stack, str(order_id))) == 2
    assert len(shipments(stack, str(order_id))) == 1


def test_the_same_key_with_another_body_is_refused_with_422(stack):
    order_id, key = uuid.uuid4(), f"key-{uuid.uuid4()}"
    assert pay(stack, order_id=order_id, key=key, customer_id="k").status_code == 201
    response = pay(stack, order_id=order_id, key=key, customer_id="k", amount=999)
    assert response.status_code == 422
    [error] = response.json()["detail"]  # a list, like every other 422 (issue 17)
    assert error["loc"] == ["header", "Idempotency-Key"] and "Idempotency-Key" in error["msg"]


def test_paying_an_already_paid_order_is_a_conflict(stack):
    order_id = uuid.uuid4()
    assert pay(stack, order_id=order_id).status_code == 201
    response = pay(stack, order_id=order_id)
    assert response.status_code == 409
    assert str(order_id) in response.json()["detail"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"order_id": "not-a-uuid"}, "order_id"), ({"amount": 0}, "amount"),
     ({"amount": 10_000_001}, "amount"), ({"amount": 12.5}, "amount"),
     ({"currency": "XXY"}, "currency"), ({"customer_id": "no spaces"}, "customer_id"),
     ({"email": "nobody"}, "email"), ({"unexpected": 1}, "unexpected")],
)
def test_an_invalid_body_gets_422_naming_the_field_and_publishes_nothing(stack, changes, field):
    response = pay(stack, **changes)
    assert response.status_code == 422
    assert [field] in [err["loc"][1:] for err in response.json()["detail"]]


def test_a_body_that_is_not_json_gets_422(stack):
    response = httpx.post(f"{stack.url('payment')}/payments", content=b"{oops",
                          headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_an_unknown_payment_is_404(stack):
    assert httpx.get(f"{stack.url('payment')}/payments/{uuid.uuid4()}").status_code == 404


@pytest.mark.parametrize("service", ["payment", "points", "mailer", "audit"])
def test_every_service_is_alive_ready_and_exposes_metrics(stack, service):
    assert httpx.get(f"{stack.url(service)}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url(service)}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert "http_requests_total" in httpx.get(f"{stack.url(service)}/metrics").text


@pytest.mark.parametrize("path", ["/payments/not-a-uuid", "/payments/not-a-uuid/refund"])
def test_a_payment_id_that_is_not_a_uuid_is_404_like_any_unknown_one(stack, path):
    method = httpx.post if path.endswith("refund") else httpx.get
    assert method(f"{stack.url('payment')}{path}").status_code == 404


def test_each_consumer_acks_and_publishes_on_separate_connections(stack):
    from urllib.parse import quote

    from devstack import throwaway

    def names() -> set:
        with throwaway.management() as api:
            listed = api.get(f"/api/vhosts/{quote(stack.vhost, safe='')}/connections").json()
        return {(c.get("client_properties") or {}).get("connection_name") for c in listed}

    wanted = {"payment", *(f"{s}{suffix}" for s in ("points", "mailer", "audit", "shipping")
                           for suffix in ("", "-publish"))}
    eventually(lambda: wanted <= names(), timeout=20, message="the connections by name")
