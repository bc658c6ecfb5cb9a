"""The SMTP client against servers that say exactly what a test needs: a scripted one on a
real TCP socket for the replies the sink never gives, and the sink with and without
PIPELINING. Whatever the server answers, the error class decides retry or DLQ as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiosmtplib
import pytest

from devstack import smtp_sink
from devstack.stack import free_port
from mailer.message import Mail, MailTemplate
from mailer.smtp import SmtpConnection, SmtpSender
from messaging.settlement import PermanentError

pytestmark = pytest.mark.integration

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
EHLO_WITH_PIPELINING = b"250-scripted\r\n250-SIZE 1000000\r\n250-PIPELINING\r\n250 HELP\r\n"


def mail(subject: str = "hello") -> Mail:
    return MailTemplate("shop@mini-ec.test").build(
        to="alice@example.com", subject=subject, message_id="<m@mini-ec>", date=0.0,
        headers={}, body="hello\n.\nbye\n")


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    """The port of a server that runs `script` for each connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ehlo: bytes = EHLO_WITH_PIPELINING) -> None:
    writer.write(b"220 scripted ready\r\n")
    assert (await reader.readline()).startswith(b"EHLO ")
    writer.write(ehlo)


async def test_with_pipelining_mail_rcpt_and_data_go_out_before_any_reply():
    """The server answers nothing until it has all three commands: a client that waited
    for the MAIL reply would time out here."""
    async def script(reader, writer):
        await greet(reader, writer)
        envelope = await reader.readuntil(b"DATA\r\n")
        assert envelope == (b"MAIL FROM:<shop@mini-ec.test>\r\n"
                            b"RCPT TO:<alice@example.com>\r\nDATA\r\n")
        writer.write(b"250 sender ok\r\n250 recipient ok\r\n354 go ahead\r\n")
        data = await reader.readuntil(b"\r\n.\r\n")
        assert b"\r\nhello\r\n..\r\nbye\r\n.\r\n" in data  # the lone dot is doubled
        writer.write(b"250 queued\r\n")
        await reader.read()  # until the client closes

    async with scripted(script) as port:
        connection = await SmtpConnection.open("127.0.0.1", port, local_hostname="test",
                                               timeout=2)
        assert "PIPELINING" in connection.extensions
        await connection.send(mail())
        connection.close()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_the_sink_gets_every_mail_with_or_without_pipelining(tmp_path, pipelining):
    controller, _ = smtp_sink.start(tmp_path, port=free_port(), pipelining=pipelining)
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
        for n in range(3):
            await sender.send(mail(f"mail {n}"))
        [connection] = sender.idle_connections
        assert ("PIPELINING" in connection.extensions) is pipelining
    finally:
        controller.stop()
    assert [m["Subject"] for m in smtp_sink.arrivals(tmp_path)] == ["mail 0", "mail 1", "mail 2"]
    assert all(m.get_content().replace("\r\n", "\n") == "hello\n.\nbye\n"
               for m in smtp_sink.mails_in(tmp_path))


def refusing(mail_reply: bytes, rcpt_reply: bytes, data_reply: bytes,
             then_hang_up: bool = False) -> Script:
    async def script(reader, writer):
        await greet(reader, writer)
        await reader.readuntil(b"DATA\r\n")
        writer.write(mail_reply + rcpt_reply + (b"" if then_hang_up else data_reply))
        if not then_hang_up:
            await reader.read()
    return script


@pytest.mark.parametrize(("replies", "error", "code"), [
    ((b"451 try later\r\n", b"503 no sender\r\n", b"503 no sender\r\n"),
     aiosmtplib.SMTPSenderRefused, 451),
    ((b"250 ok\r\n", b"450 mailbox busy\r\n", b"554 no recipients\r\n"),
     aiosmtplib.SMTPRecipientsRefused, 450),
    ((b"250 ok\r\n", b"250 ok\r\n", b"452 no room\r\n"), aiosmtplib.SMTPDataError, 452),
])
async def test_a_temporary_refusal_is_transient_and_says_its_code(replies, error, code):
    async with scripted(refusing(*replies)) as port:
        with pytest.raises(error, match=str(code)) as raised:
            await SmtpSender("127.0.0.1", port, timeout=2).send(mail())
    assert not isinstance(raised.value, PermanentError)


@pytest.mark.parametrize(("replies", "match"), [
    ((b"550 no such sender\r\n", b"503 no sender\r\n", b"503 no sender\r\n"), "SMTP 550"),
    ((b"250 ok\r\n", b"550 no such user\r\n", b"554 no recipients\r\n"), "recipient refused"),
    ((b"250 ok\r\n", b"250 ok\r\n", b"554 not now\r\n"), "SMTP 554"),
])
async def test_a_refusal_for_good_is_permanent(replies, match):
    async with scripted(refusing(*replies)) as port:
        with pytest.raises(PermanentError, match=match):
            await SmtpSender("127.0.0.1", port, timeout=2).send(mail())


async def test_a_refusal_followed_by_a_hang_up_still_counts_as_the_refusal():
    script = refusing(b"250 ok\r\n", b"550 no such user\r\n", b"", then_hang_up=True)
    async with scripted(script) as port:
        with pytest.raises(PermanentError, match="recipient refused"):
            await SmtpSender("127.0.0.1", port, timeout=2).send(mail())


async def test_a_server_that_refuses_at_the_greeting_or_hangs_up_is_transient():
    async def busy(reader, writer):
        writer.write(b"421-too busy\r\n421 come back later\r\n")

    async def hangs_up(reader, writer):
        await greet(reader, writer)
        await reader.readline()

    async with scripted(busy) as port:
        with pytest.raises(aiosmtplib.SMTPConnectResponseError, match="come back later"):
            await SmtpSender("127.0.0.1", port, timeout=2).send(mail())
    async with scripted(hangs_up) as port:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await SmtpSender("127.0.0.1", port, timeout=2).send(mail())


async def test_a_server_that_never_answers_times_out_and_its_connection_is_not_kept():
    async def silent(reader, writer):
        await greet(reader, writer)
        await reader.read()

    async with scripted(silent) as port:
        sender = SmtpSender("127.0.0.1", port, timeout=0.3)
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await sender.send(mail())
        assert sender.idle_connections == ()


async def test_a_server_without_ehlo_gets_helo_and_a_garbled_reply_is_an_error():
    async def helo_only(reader, writer):
        writer.write(b"220 old\r\n")
        await reader.readline()
        writer.write(b"502 what is EHLO\r\n")
        assert (await reader.readline()).startswith(b"HELO ")
        writer.write(b"250 old\r\n")
        assert (await reader.readline()).startswith(b"MAIL FROM:")  # one at a time
        writer.write(b"hello there\r\n")
        await reader.read()

    async with scripted(helo_only) as port:
        connection = await SmtpConnection.open("127.0.0.1", port, local_hostname="test",
                                               timeout=2)
        assert connection.extensions == frozenset()
        with pytest.raises(aiosmtplib.SMTPResponseException, match="malformed reply"):
            await connection.send(mail())
        connection.close()


async def test_nothing_is_sent_to_a_server_without_smtputf8_for_a_non_ascii_address():
    async def script(reader, writer):
        await greet(reader, writer)
        assert await reader.read() == b""  # not a byte of the mail

    utf8_mail = MailTemplate("shop@mini-ec.test").build(
        to="ユーザー@example.com", subject="s", message_id="<m@mini-ec>", date=0.0,
        headers={}, body="b")
    async with scripted(script) as port:
        sender = SmtpSender("127.0.0.1", port, timeout=2)
        with pytest.raises(aiosmtplib.SMTPNotSupported):
            await sender.send(utf8_mail)
