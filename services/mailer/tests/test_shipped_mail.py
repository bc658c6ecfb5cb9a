"""The shipped mail: its content, and that it never goes out before the order's thank-you
mail, whatever order the two events arrive in (a real SMTP server; the mailer's spec and
real inbox run in memory)."""

from __future__ import annotations

import pytest

from devstack import events, smtp_sink
from messaging.inbox import Outcome, OutOfOrder

pytestmark = pytest.mark.integration


async def test_the_shipped_mail_carries_its_own_message_id_the_correlation_and_tracking(
    mailer,
):
    service, mail_dir = mailer
    paid = events.order_paid()
    shipped = events.order_shipped(paid)
    assert await service.deliver(paid) is Outcome.APPLIED
    assert await service.deliver(shipped) is Outcome.APPLIED

    [mail] = [m for m in smtp_sink.mails_in(mail_dir)
              if m["Subject"] == "Your order has shipped"]
    assert mail["Message-ID"] == f"<{shipped.event_id}@mini-ec>"
    assert mail["X-Correlation-ID"] == paid.correlation_id
    assert mail["To"] == paid.data.email
    assert shipped.data.tracking_number in mail.get_content()


async def test_a_shipped_event_before_its_payment_waits_and_sends_nothing(mailer):
    service, mail_dir = mailer
    paid = events.order_paid()
    shipped = events.order_shipped(paid)

    with pytest.raises(OutOfOrder, match="waits for #1 of payment"):
        await service.deliver(shipped)
    assert smtp_sink.mails_in(mail_dir) == []  # checked before the SMTP step

    assert await service.deliver(paid) is Outcome.APPLIED
    assert await service.deliver(shipped) is Outcome.APPLIED
    assert await service.deliver(shipped) is Outcome.DUPLICATE
    subjects = [m["Subject"] for m in smtp_sink.arrivals(mail_dir)]
    assert subjects == ["Thank you for your order", "Your order has shipped"]


async def test_a_refund_and_a_shipment_apply_in_either_order(mailer):
    service, mail_dir = mailer
    for refund_first in (True, False):
        paid = events.order_paid()
        later = [events.order_refunded(paid), events.order_shipped(paid)]
        assert await service.deliver(paid) is Outcome.APPLIED
        for event in (later if refund_first else later[::-1]):
            assert await service.deliver(event) is Outcome.APPLIED
    assert len(smtp_sink.mails_in(mail_dir)) == 6
