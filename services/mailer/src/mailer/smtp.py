"""The SMTP adapter: hands a mail to the server over aiosmtplib, inside a CLIENT span."""

from __future__ import annotations

import asyncio
import socket

import aiosmtplib
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from mailer.message import Mail
from messaging.consumer import PermanentError

tracer = trace.get_tracer(__name__)

MAX_IDLE_CONNECTIONS = 8


class SmtpSender:
    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        # The EHLO name, looked up once: aiosmtplib otherwise resolves it (socket.getfqdn in
        # a worker thread) for every mail.
        self._local_hostname: str | None = None
        # Connections kept open between mails: a mail costs MAIL, RCPT and DATA, not also a
        # TCP connect, greeting, EHLO and QUIT. One mail at a time per connection.
        self._idle: list[aiosmtplib.SMTP] = []

    async def _send(self, mail: Mail) -> None:
        client = None
        while self._idle and client is None:
            client = self._idle.pop()
            if not client.is_connected:  # the server closed it while idle
                client.close()
                client = None
        if client is None:
            if self._local_hostname is None:
                self._local_hostname = await asyncio.to_thread(socket.getfqdn)
            client = aiosmtplib.SMTP(
                hostname=self.host, port=self.port, timeout=self.timeout,
                start_tls=False, use_tls=False, local_hostname=self._local_hostname,
            )
            await client.connect()
        try:
            # The bytes as built (mailer/message.py): `send_message` would flatten an
            # EmailMessage here with the email package's generator.
            await client.sendmail(mail.sender, [mail.recipient], mail.content,
                                  mail_options=["SMTPUTF8"] if mail.smtputf8 else None)
        except BaseException:
            # Whatever state the session is in, don't reuse it; the error decides the rest.
            client.close()
            raise
        if len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(client)
        else:
            client.close()

    async def send(self, mail: Mail) -> None:
        """Send, or raise: PermanentError when the server refuses for good (5xx), else transient."""
        with tracer.start_as_current_span(
            "smtp send", kind=SpanKind.CLIENT,
            attributes={"server.address": self.host, "server.port": self.port,
                        "mini_ec.mail.message_id": mail.message_id},
        ):
            try:
                await self._send(mail)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                if all(r.code >= 500 for r in exc.recipients):
                    raise PermanentError(f"recipient refused: {exc}") from exc
                raise
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:
                    raise PermanentError(f"SMTP {exc.code}: {exc.message}") from exc
                raise
