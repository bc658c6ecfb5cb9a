"""Issue 26: payment publishes OrderPaid in version 1 or 2, as ORDER_PAID_VERSION says;
the aggregate records version 2 either way (payment/publishing.py, docs/evolution.md)."""

import json
import uuid

import pytest
from sqlalchemy import select

from contracts import Money, OrderPaid, OrderPaidV1, PaymentData, read_event, upcast
from devstack import events
from messaging import outbox_store
from messaging.chassis.settings import load_settings
from messaging.outbox_store import outbox_table
from messaging.transactions import Transactions
from payment import store
from payment.handlers import PayCommand, PaymentService
from payment.publishing import as_published, order_paid_v2_to_v1
from payment.settings import Settings


@pytest.mark.unit
def test_version_2_as_version_1_splits_money_into_amount_and_currency():
    paid = events.order_paid(amount=1234)
    v1 = order_paid_v2_to_v1(paid)
    assert isinstance(v1, OrderPaidV1) and v1.version == 1
    assert v1.data == PaymentData(payment_id=paid.data.payment_id, customer_id="alice",
                                  email="alice@example.com", amount=1234, currency="JPY")
    assert upcast(v1) == paid  # and the consumers' upcaster brings it back, unchanged


@pytest.mark.unit
def test_only_order_paid_changes_with_the_setting():
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    assert as_published(paid, 2) is paid
    assert isinstance(as_published(paid, 1), OrderPaidV1)
    assert as_published(refunded, 1) is refunded


@pytest.mark.unit
@pytest.mark.parametrize("value", ["0", "3", "two", "1.5", ""])
def test_an_order_paid_version_payment_cannot_publish_stops_it_at_start(monkeypatch, capsys,
                                                                         value):
    monkeypatch.setenv("ORDER_PAID_VERSION", value)
    with pytest.raises(SystemExit) as exit_:
        load_settings(Settings, "payment")
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("payment: invalid setting: ORDER_PAID_VERSION: ")


@pytest.mark.unit
def test_the_default_is_version_1_until_every_consumer_reads_version_2(monkeypatch):
    monkeypatch.delenv("ORDER_PAID_VERSION", raising=False)
    assert Settings().order_paid_version == 1


@pytest.mark.integration
@pytest.mark.parametrize("version", [1, 2])
async def test_the_outbox_holds_order_paid_in_the_version_the_setting_names(sessions_for,
                                                                            version):
    sessions = await sessions_for(store.metadata, outbox_store.metadata)
    handed = []

    async def committed(published):
        handed.extend(published)

    payments = PaymentService(Transactions(sessions, events_committed=committed),
                              order_paid_version=version)
    order, _ = await payments.pay(PayCommand(
        order_id=uuid.uuid4(), customer_id="alice", email="alice@example.com",
        amount=1200, currency="JPY", correlation_id="c-1"))
    await payments.refund(order.payment_id)
    async with sessions() as session:
        bodies = (await session.execute(
            select(outbox_table.c.body).order_by(outbox_table.c.id))).scalars().all()
    paid, refunded = (read_event(body.encode()) for body in bodies)
    assert [json.loads(b)["version"] for b in bodies] == [version, 1]
    assert type(paid) is (OrderPaidV1 if version == 1 else OrderPaid)
    assert upcast(paid).data.amount == Money(value=1200, currency="JPY")
    assert refunded.event_type == "OrderRefunded"
    # The synchronous mode's dispatcher gets what was published, not the aggregate's.
    assert [type(e) for e in handed] == [type(paid), type(refunded)]
