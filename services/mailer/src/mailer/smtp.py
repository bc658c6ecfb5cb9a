"""The SMTP adapter: hands a mail to the server over aiosmtplib, inside a CLIENT span."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from messaging.consumer import PermanentError

tracer = trace.get_tracer(__name__)


class SmtpSender:
    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout

    async def send(self, message: EmailMessage) -> None:
        """Send, or raise: PermanentError when the server refuses for good (5xx), else transient."""
        with tracer.start_as_current_span(
            "smtp send", kind=SpanKind.CLIENT,
            attributes={"server.address": self.host, "server.port": self.port,
                        "messaging.message.id": message["Message-ID"]},
        ):
            try:
                await aiosmtplib.send(
                    message, hostname=self.host, port=self.port, timeout=self.timeout,
                    start_tls=False, use_tls=False,
                )
            except aiosmtplib.SMTPRecipientsRefused as exc:
                if all(r.code >= 500 for r in exc.recipients):
                    raise PermanentError(f"recipient refused: {exc}") from exc
                raise
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:
                    raise PermanentError(f"SMTP {exc.code}: {exc.message}") from exc
                raise
