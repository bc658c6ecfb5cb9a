import uuid
from datetime import UTC, datetime

import pytest

from contracts import Money, OrderPaid, OrderRefunded
from payment.domain import NotRefundable, Order, PaymentStatus
from payment.handlers import PayCommand

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def paid_order() -> Order:
    return Order.pay(order_id=uuid.uuid4(), customer_id="alice", email="alice@example.com",
                     amount=1200, currency="JPY", correlation_id="cid-1", now=NOW)


def test_paying_an_order_records_order_paid_as_its_first_event():
    order = paid_order()
    [event] = order.pull_domain_events()
    assert isinstance(event, OrderPaid)
    assert order.status is PaymentStatus.PAID
    assert (event.order_id, event.sequence, event.correlation_id) == (order.order_id, 1, "cid-1")
    assert event.data.payment_id == order.payment_id
    assert event.version == 2  # the aggregate records the current version
    assert event.data.amount == Money(value=1200, currency="JPY") and event.occurred_at == NOW


def test_pulling_domain_events_hands_them_over_once():
    order = paid_order()
    assert len(order.pull_domain_events()) == 1
    assert order.pull_domain_events() == []


def test_refunding_a_paid_order_records_order_refunded_as_sequence_two():
    order = paid_order()
    order.pull_domain_events()
    order.refund(now=NOW)
    [event] = order.pull_domain_events()
    assert isinstance(event, OrderRefunded)
    assert event.sequence == 2 and order.status is PaymentStatus.REFUNDED
    assert event.data.amount == order.amount


def test_a_refunded_order_cannot_be_refunded_again_and_records_nothing():
    order = paid_order()
    order.refund(now=NOW)
    order.pull_domain_events()
    with pytest.raises(NotRefundable, match="refunded"):
        order.refund(now=NOW)
    assert order.pull_domain_events() == []


def command(**changes) -> PayCommand:
    fields = dict(order_id=uuid.UUID(int=1), customer_id="alice", email="alice@example.com",
                  amount=1200, currency="JPY", correlation_id="a", idempotency_key="k")
    return PayCommand(**(fields | changes))


def test_the_idempotency_fingerprint_ignores_correlation_id_and_email_case():
    assert command().fingerprint() == command(correlation_id="b").fingerprint()
    assert command().fingerprint() == command(email="ALICE@example.com").fingerprint()


@pytest.mark.parametrize(
    "change",
    [{"amount": 1201}, {"currency": "USD"}, {"customer_id": "bob"},
     {"order_id": uuid.UUID(int=2)}, {"email": "bob@example.com"}],
)
def test_the_idempotency_fingerprint_changes_with_any_business_field(change):
    assert command().fingerprint() != command(**change).fingerprint()
