"""The SMTP adapter: hands a mail to the server inside a CLIENT span.

A small SMTP client of our own rather than aiosmtplib's `SMTP`: that one sends each
command and waits for its reply, and has no PIPELINING (RFC 2920). Here, when the server
offers PIPELINING, MAIL, RCPT and DATA go out in one write and their three replies are read
together, then the message: two round trips and two writes per mail instead of four. It is
also less code per mail: the message is already CRLF bytes from `mailer.message`, so
nothing is parsed or re-encoded on the way. The errors raised are aiosmtplib's exception
classes, so what decides retry or DLQ (`SmtpSender.send`) and what callers see are as
before.
"""

from __future__ import annotations

import asyncio
import re
import socket

import aiosmtplib
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from mailer.message import Mail
from messaging.settlement import PermanentError

tracer = trace.get_tracer(__name__)

MAX_IDLE_CONNECTIONS = 8
# "." alone on a line ends DATA; a line of the message that starts with "." gets another.
_LINE_STARTING_WITH_A_DOT = re.compile(rb"(?m)^\.")
_HOSTNAME = re.compile(r"[A-Za-z0-9.-]{1,253}")


class SmtpConnection:
    """One SMTP session: greeting and EHLO once, then one mail at a time over it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float):
        self._reader, self._writer, self._timeout = reader, writer, timeout
        self.extensions: frozenset[str] = frozenset()

    @classmethod
    async def open(cls, host: str, port: int, *, local_hostname: str,
                   timeout: float) -> SmtpConnection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            raise aiosmtplib.SMTPConnectTimeoutError(
                f"no connection to {host}:{port} within {timeout} s") from exc
        except OSError as exc:
            raise aiosmtplib.SMTPConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        connection = cls(reader, writer, timeout)
        try:
            await connection._start(local_hostname)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _start(self, local_hostname: str) -> None:
        [(code, message)] = await self._exchange(b"", replies=1)
        if code != 220:
            raise aiosmtplib.SMTPConnectResponseError(code, message)
        [(code, message)] = await self._exchange(f"EHLO {local_hostname}\r\n".encode(), 1)
        if code == 250:
            # The first line names the server; each further one starts with a keyword.
            self.extensions = frozenset(line.split(" ", 1)[0].upper()
                                        for line in message.split("\n")[1:] if line)
            return
        [(code, message)] = await self._exchange(f"HELO {local_hostname}\r\n".encode(), 1)
        if code != 250:
            raise aiosmtplib.SMTPHeloError(code, message)

    @property
    def is_usable(self) -> bool:
        """False once the server closed its side (seen while idle) or we closed ours."""
        return not (self._writer.is_closing() or self._reader.at_eof())

    def close(self) -> None:
        self._writer.close()

    async def send(self, mail: Mail) -> None:
        """One mail; raises on any reply but the expected ones (the session is then spent)."""
        if mail.smtputf8 and "SMTPUTF8" not in self.extensions:
            raise aiosmtplib.SMTPNotSupported(
                f"the address {mail.recipient!r} needs SMTPUTF8, which the server does not offer")
        encoding = "utf-8" if mail.smtputf8 else "ascii"
        envelope = [
            f"MAIL FROM:<{mail.sender}>{' SMTPUTF8' if mail.smtputf8 else ''}\r\n".encode(
                encoding),
            f"RCPT TO:<{mail.recipient}>\r\n".encode(encoding),
            b"DATA\r\n",
        ]
        if "PIPELINING" in self.extensions:
            replies = await self._exchange(b"".join(envelope), replies=3)
        else:
            replies = []
            for command in envelope:
                replies += await self._exchange(command, replies=1)
                if replies[-1][0] >= 400:
                    break
        (code, message), *rest = replies
        if code != 250:
            raise aiosmtplib.SMTPSenderRefused(code, message, mail.sender)
        (code, message), *rest = rest
        if code not in (250, 251):
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(code, message, mail.recipient)])
        [(code, message)] = rest
        if code != 354:
            raise aiosmtplib.SMTPDataError(code, message)
        content = _LINE_STARTING_WITH_A_DOT.sub(b"..", mail.content)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        [(code, message)] = await self._exchange(content + b".\r\n", replies=1)
        if code != 250:
            raise aiosmtplib.SMTPDataError(code, message)

    async def _exchange(self, data: bytes, replies: int) -> list[tuple[int, str]]:
        """Write `data` (if any), then read that many replies, all within the timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                if data:
                    self._writer.write(data)
                    await self._writer.drain()
                read: list[tuple[int, str]] = []
                for _ in range(replies):
                    try:
                        read.append(await self._reply())
                    except aiosmtplib.SMTPServerDisconnected:
                        if any(code >= 400 for code, _ in read):
                            return read  # a refusal, then the hang-up: the refusal says why
                        raise
                return read
        except aiosmtplib.SMTPException:
            raise
        except TimeoutError as exc:
            raise aiosmtplib.SMTPReadTimeoutError(
                f"no reply from the server within {self._timeout} s") from exc
        except OSError as exc:
            raise aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc}") from exc

    async def _reply(self) -> tuple[int, str]:
        """(code, text) of one reply; the lines of a multi-line reply joined with "\\n"."""
        lines = []
        while True:
            try:
                line = await self._reader.readline()
            except ValueError as exc:  # a line past the reader's limit
                raise aiosmtplib.SMTPResponseException(-1, f"malformed reply: {exc}") from exc
            if not line.endswith(b"\n"):
                raise aiosmtplib.SMTPServerDisconnected("the server closed the connection")
            code = line[:3]
            if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                raise aiosmtplib.SMTPResponseException(-1, f"malformed reply: {line!r}")
            lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(code), "\n".join(lines)


class SmtpSender:
    def __init__(self, host: str, port: int, timeout: float, *,
                 max_idle: int = MAX_IDLE_CONNECTIONS):
        self.host, self.port, self.timeout = host, port, timeout
        self._max_idle = max_idle
        # The EHLO name, looked up once (socket.getfqdn in a worker thread), not per mail.
        self._local_hostname: str | None = None
        # Connections kept open between mails: a mail costs MAIL, RCPT and DATA, not also a
        # TCP connect, greeting, EHLO and QUIT. One mail at a time per connection.
        self._idle: list[SmtpConnection] = []

    @property
    def idle_connections(self) -> tuple[SmtpConnection, ...]:
        """The connections kept open for the next mails (at most `max_idle`)."""
        return tuple(self._idle)

    async def _connection(self) -> SmtpConnection:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_usable:
                return connection
            connection.close()  # the server closed it while idle
        if self._local_hostname is None:
            name = await asyncio.to_thread(socket.getfqdn)
            self._local_hostname = name if _HOSTNAME.fullmatch(name) else "localhost"
        return await SmtpConnection.open(self.host, self.port, timeout=self.timeout,
                                         local_hostname=self._local_hostname)

    async def _send(self, mail: Mail) -> None:
        connection = await self._connection()
        try:
            await connection.send(mail)
        except BaseException:
            # Whatever state the session is in, don't reuse it; the error decides the rest.
            connection.close()
            raise
        if len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

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
