"""Composition root of mailer: settings -> SMTP sender -> consumer app -> server."""

from functools import partial

from fastapi import FastAPI

from mailer import api, handlers, store
from mailer.settings import Settings
from mailer.smtp import SmtpSender
from messaging import telemetry
from messaging.app import consumer_app
from messaging.logs import setup_logging
from messaging.runtime import serve
from messaging.settings import load_settings

SERVICE = "mailer"


def create_app(settings: Settings) -> FastAPI:
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_timeout)
    return consumer_app(
        SERVICE, settings, metadata=store.metadata, router=api.router,
        before=partial(handlers.send_mail, sender=sender, mail_from=settings.mail_from),
        handler=partial(handlers.record_mail, mail_from=settings.mail_from),
    )


def main() -> None:
    settings = load_settings(Settings, SERVICE)
    setup_logging(SERVICE, settings.log_level)
    telemetry.setup_tracing(SERVICE)
    serve(create_app(settings), settings)
