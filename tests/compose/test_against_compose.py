"""Cross-service checks against a *running* `docker compose` stack: `make test-compose`.

They read everything through the stack's own windows: the services' HTTP APIs, Jaeger's
query API (`/api/v3/traces`), Mailpit's API (`/api/v1/search`) and the RabbitMQ management
API. Base URLs come from the environment (`make test-compose` sets the defaults of .env).
`make test` deselects them (marker `compose`): there is no Docker engine on the CI machine.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import httpx
import pytest

from devstack.jaeger import Jaeger
from devstack.mailpit import Mailpit
from devstack.wait import eventually

pytestmark = pytest.mark.compose

if not os.environ.get("PAYMENT_URL"):
    pytest.skip(
        "needs a running compose stack: `docker compose up --build -d`, then `make test-compose`",
        allow_module_level=True,
    )

PAYMENT_URL = os.environ["PAYMENT_URL"]
POINTS_URL = os.environ["POINTS_URL"]
MAILER_URL = os.environ["MAILER_URL"]
AUDIT_URL = os.environ["AUDIT_URL"]
SHIPPING_URL = os.environ["SHIPPING_URL"]
JAEGER_URL = os.environ["JAEGER_URL"]
MAILPIT_URL = os.environ["MAILPIT_URL"]
MANAGEMENT_URL = os.environ["RABBITMQ_MANAGEMENT_URL"]
MANAGEMENT_AUTH = (
    os.environ["RABBITMQ_MANAGEMENT_USER"], os.environ["RABBITMQ_MANAGEMENT_PASSWORD"]
)
VHOST = os.environ.get("RABBITMQ_VHOST", "shop")
SLOW = 120.0  # traces are exported in batches and images may still be warming up


@pytest.fixture(scope="module")
def paid():
    """One payment with its own correlation id and customer, shared by the checks below."""
    customer = f"compose-{uuid.uuid4().hex[:10]}"
    correlation_id = f"test-compose-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{PAYMENT_URL}/payments",
        json={"order_id": str(uuid.uuid4()), "customer_id": customer,
              "email": f"{customer}@example.com", "amount": 1200, "currency": "JPY"},
        headers={"X-Correlation-ID": correlation_id},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.headers["X-Correlation-ID"] == correlation_id
    return response.json()


def _get(url: str):
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


def _management(path: str):
    response = httpx.get(f"{MANAGEMENT_URL}{path}", auth=MANAGEMENT_AUTH, timeout=10)
    response.raise_for_status()
    return response.json()


def test_points_shipping_and_audit_record_the_payment_and_its_shipment(paid):
    customer, order_id = paid["customer_id"], paid["order_id"]
    balance = eventually(
        lambda: _get(f"{POINTS_URL}/customers/{customer}/points")["balance"],
        timeout=SLOW, message="points granted",
    )
    assert balance == 12
    [shipment] = eventually(lambda: _get(f"{SHIPPING_URL}/shipments?order_id={order_id}"),
                            timeout=SLOW, message="shipped")
    assert shipment["status"] == "shipped"
    audit = eventually(
        lambda: a if len(a := _get(f"{AUDIT_URL}/events?order_id={order_id}")) == 2 else None,
        timeout=SLOW, message="both events audited")
    assert sorted((e["event_type"], e["correlation_id"]) for e in audit) == [
        ("OrderPaid", paid["correlation_id"]), ("OrderShipped", paid["correlation_id"])
    ]


def test_the_thank_you_mail_is_in_mailpit_with_the_correlation_id(paid):
    mailpit = Mailpit(MAILPIT_URL)
    try:
        mails = eventually(lambda: m if len(m := mailpit.mails_to(paid["email"])) == 2 else None,
                           timeout=SLOW, message="the thank-you and the shipped mail in Mailpit")
        for mail in mails:
            headers = {k.lower(): v for k, v in mailpit.headers(mail.id).items()}
            assert headers["x-correlation-id"] == [paid["correlation_id"]]
    finally:
        mailpit.close()
    sent = _get(f"{MAILER_URL}/mails?order_id={paid['order_id']}")
    assert [(m["to"], m["subject"]) for m in sent] == [
        (paid["email"], "Thank you for your order"), (paid["email"], "Your order has shipped")]


def test_the_payment_is_one_trace_in_jaeger_from_the_request_to_every_consumer(paid):
    jaeger = Jaeger(JAEGER_URL)

    def whole_trace():
        spans = jaeger.trace_by_correlation_id(paid["correlation_id"])
        services = {s.service for s in spans}
        complete = {"payment", "points", "mailer", "audit", "shipping"} <= services and len(
            [s for s in spans if s.name == "smtp send"]) == 2
        return spans if complete else None

    try:
        spans = eventually(whole_trace, timeout=SLOW, interval=1.0,
                           message="the whole trace in Jaeger")
    finally:
        jaeger.close()
    assert len({s.trace_id for s in spans}) == 1, "one trace per order"
    roots = [s for s in spans if not s.parent_span_id]
    assert [r.service for r in roots] == ["payment"], "the HTTP request is the root"
    names = {s.name for s in spans}
    assert "outbox relay" in names
    # The OpenTelemetry messaging conventions' names: `{operation} {destination}`.
    assert {"publish shop.events", "process points.events", "process mailer.events",
            "process audit.events"} <= names
    assert all(s.attributes.get("mini_ec.correlation_id") == paid["correlation_id"] for s in spans)


def test_the_broker_runs_the_definitions_topology_with_consumers_and_no_guest(paid):
    work_queues = [f"{service}.events" for service in ("points", "mailer", "audit", "shipping")]

    def queues_once_consumed() -> dict | None:
        # The management API's counts lag the broker by seconds (measured 6.6 s behind a
        # consumer that had already attached): poll them, never read them once.
        queues = {q["name"]: q for q in _management(f"/api/queues/{quote(VHOST, safe='')}")}
        consumed = all(queues.get(work, {}).get("consumers", 0) >= 1 for work in work_queues)
        return queues if consumed else None

    queues = eventually(queues_once_consumed, timeout=SLOW, interval=1.0,
                        message="a consumer on every work queue")
    for work in work_queues:
        expected = {work, f"{work}.dlq"} | {f"{work}.retry.{d}s" for d in (1, 5, 30)}
        assert expected <= set(queues), work
        assert all(queues[name]["type"] == "quorum" for name in expected)
    users = {u["name"] for u in _management("/api/users")}
    assert {"admin", "payment", "points", "mailer", "audit", "shipping"} <= users
    assert "guest" not in users


CONSOLE_URL = os.environ.get("CONSOLE_URL")
CONSOLE_AUTH = (os.environ.get("CONSOLE_USER", ""), os.environ.get("CONSOLE_PASSWORD", ""))


def test_a_poison_message_appears_in_the_console_as_a_group_per_service():
    """Published as the admin through the management API (no service user may write a body
    that is not an event): every consumer parks it as poison, the console takes each DLQ."""
    assert CONSOLE_URL, "CONSOLE_URL is not set (make test-compose sets it from .env)"
    assert httpx.get(f"{CONSOLE_URL}/api/groups", timeout=10).status_code == 401
    message_id = str(uuid.uuid4())
    published = httpx.post(
        f"{MANAGEMENT_URL}/api/exchanges/{quote(VHOST, safe='')}/shop.events/publish",
        auth=MANAGEMENT_AUTH, timeout=10,
        json={"routing_key": "order.paid", "payload": "this is not json",
              "payload_encoding": "string",
              "properties": {"message_id": message_id, "type": "OrderPaid",
                             "content_type": "application/json", "delivery_mode": 2}},
    )
    assert published.status_code == 200 and published.json()["routed"], published.text

    def parked_everywhere() -> set[str] | None:
        rows = httpx.get(f"{CONSOLE_URL}/api/dead-letters", auth=CONSOLE_AUTH, timeout=10,
                         params={"event_type": "OrderPaid", "error_class": "poison"}).json()
        services = {r["service"] for r in rows if r["event_id"] == message_id}
        return services if len(services) == 4 else None

    services = eventually(parked_everywhere, timeout=SLOW, interval=1.0,
                          message="the poison message in the console for every consumer")
    assert services == {"points", "mailer", "audit", "shipping"}
    groups = httpx.get(f"{CONSOLE_URL}/api/groups", auth=CONSOLE_AUTH, timeout=10).json()
    assert {g["service"] for g in groups if g["error_class"] == "poison"} >= services
