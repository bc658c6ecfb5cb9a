"""What mailer is, for the library, the tools and the tests (see messaging/spec.py)."""

from functools import partial

from contracts import Event, OrderPaid, OrderRefunded, OrderShipped
from mailer import api, handlers, store
from mailer.handlers import MailSender
from mailer.message import MailTemplate, UnsafeMail
from mailer.settings import Settings
from mailer.smtp import SmtpSender
from messaging.settlement import PermanentError
from messaging.spec import Consumes, Reads, ServiceSpec, Subscription


async def _send_mail(event: Event, *, sender: MailSender, template: MailTemplate) -> None:
    try:
        await handlers.send_mail(event, sender=sender, template=template)
    except UnsafeMail as exc:  # the same event can never make a safe mail: DLQ at once
        raise PermanentError(str(exc)) from exc


def subscriptions(settings: Settings) -> list[Subscription]:
    """Each mail goes to the SMTP server first (outside the transaction), then is recorded."""
    # As many idle connections as mails can be in flight (one per unacked message): under
    # load each mail finds one open instead of a connect, greeting, EHLO and QUIT.
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_timeout,
                        max_idle=settings.prefetch)
    send = partial(_send_mail, sender=sender, template=MailTemplate(settings.mail_from))
    return [
        Subscription(OrderPaid, handlers.record_mail, before=send),
        Subscription(OrderRefunded, handlers.record_mail, before=send),
        # Waits for the order's OrderPaid (contracts: caused by it), so "Your order has
        # shipped" never goes out before "Thank you for your order" (docs/ordering.md).
        Subscription(OrderShipped, handlers.record_mail, before=send),
    ]


SPEC = ServiceSpec(
    name="mailer",
    settings=Settings,
    tables=store.metadata,
    router=api.router,
    routes=("GET /mails",),
    consumes=Consumes(queue="mailer.events", bindings=("order.*",), subscriptions=subscriptions),
    local_env={"SMTP_HOST": "127.0.0.1", "SMTP_PORT": "{smtp_port}"},
    reads=(
        Reads("OrderPaid", 1, {"data.customer_id": "string", "data.email": "string",
                               "data.amount": "integer", "data.currency": "string"}),
        Reads("OrderPaid", 2, {"data.customer_id": "string", "data.email": "string",
                               "data.amount.value": "integer",
                               "data.amount.currency": "string"}),
        Reads("OrderRefunded", 1, {"data.customer_id": "string", "data.email": "string",
                                   "data.amount": "integer", "data.currency": "string"}),
        Reads("OrderShipped", 1, {"data.customer_id": "string", "data.email": "string",
                                  "data.carrier": "string", "data.tracking_number": "string"}),
    ),
)
