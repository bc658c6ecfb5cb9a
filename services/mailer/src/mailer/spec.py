"""What mailer is, for the library, the tools and the tests (see messaging/spec.py)."""

from functools import partial

from contracts import OrderPaid, OrderRefunded, OrderShipped
from mailer import api, handlers, store
from mailer.message import MailTemplate
from mailer.settings import Settings
from mailer.smtp import SmtpSender
from messaging.spec import Consumes, ServiceSpec, Subscription


def subscriptions(settings: Settings) -> list[Subscription]:
    """Each mail goes to the SMTP server first (outside the transaction), then is recorded."""
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_timeout)
    send = partial(handlers.send_mail, sender=sender, template=MailTemplate(settings.mail_from))
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
)
