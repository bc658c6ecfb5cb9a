"""What mailer does with an event: one mail per event, remembered so a redelivery sends nothing.

Two steps: `send_mail` talks to the SMTP server outside any database transaction, then
`record_mail` commits the record together with the inbox entry. The SMTP server takes the
mail before that commit. If the process dies in
that gap the event is redelivered and the mail goes out again, with the same Message-ID
(derived from the event id), so mail clients can fold the two. See docs/exactly-once.md,
"Crash windows".
"""

from __future__ import annotations

from typing import Protocol

from contracts import Event, OrderPaid, OrderRefunded, OrderShipped, utcnow
from mailer import store
from mailer.message import Mail, MailTemplate, UnsafeMail
from messaging.chassis.db import Statements

CORRELATION_HEADER = "X-Correlation-ID"


class MailSender(Protocol):
    async def send(self, mail: Mail) -> None: ...


def message_id_for(event: Event) -> str:
    return f"<{event.event_id}@mini-ec>"


def subject_for(event: Event) -> str:
    match event:
        case OrderPaid():
            return "Thank you for your order"
        case OrderRefunded():
            return "Your refund"
        case OrderShipped():
            return "Your order has shipped"
    raise TypeError(f"no mail for {event.event_type}")


def body_for(event: Event) -> str:
    match event:
        case OrderPaid():
            amount = f"{event.data.amount.value} {event.data.amount.currency} (minor units)"
            return (f"Hello {event.data.customer_id},\n\nwe received your payment of {amount} "
                    f"for order {event.order_id}.\n\nThank you for shopping with Mini EC.\n")
        case OrderRefunded():
            amount = f"{event.data.amount} {event.data.currency} (minor units)"
            return (f"Hello {event.data.customer_id},\n\nyour payment of {amount} for order "
                    f"{event.order_id} has been refunded.\n")
        case OrderShipped():
            return (f"Hello {event.data.customer_id},\n\nyour order {event.order_id} is on its "
                    f"way with {event.data.carrier}.\nTracking number: "
                    f"{event.data.tracking_number}\n")
    raise TypeError(f"no mail for {event.event_type}")


def compose(event: Event, template: MailTemplate) -> Mail:
    return template.build(
        to=event.data.email,
        subject=subject_for(event),
        message_id=message_id_for(event),
        date=event.occurred_at.timestamp(),
        headers={CORRELATION_HEADER: event.correlation_id},
        body=body_for(event),
    )


async def send_mail(event: Event, *, sender: MailSender, template: MailTemplate) -> None:
    """Hand the mail to the SMTP server. Runs before the inbox transaction (mailer/spec.py).

    Raises UnsafeMail, before anything is sent, for an event whose values cannot go into a
    mail (mailer/spec.py makes that permanent). Composing is a pure function of the event,
    so whatever it raises it would raise again on every retry."""
    try:
        mail = compose(event, template)
    except UnsafeMail:
        raise
    except Exception as exc:  # e.g. a Date header past the year 9999
        raise UnsafeMail(f"{event.event_type} cannot be written as a mail: "
                         f"{type(exc).__name__}: {exc}") from exc
    await sender.send(mail)


async def record_mail(event: Event, conn: Statements) -> None:
    """Remember what was sent, in the same transaction as the inbox record.

    The same subject and Message-ID as `compose` gives the mail, without building it again
    (the email package's header parsing was a tenth of the mailer's CPU).
    """
    await store.record_sent(
        conn,
        event_id=str(event.event_id),
        order_id=str(event.order_id),
        to=event.data.email,
        subject=subject_for(event),
        message_id=message_id_for(event),
        sent_at=utcnow(),
    )
