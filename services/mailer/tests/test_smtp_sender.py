"""SmtpSender keeps connections open between mails, and never trusts one the server closed."""

import asyncio

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from devstack import smtp_sink
from devstack.stack import free_port
from mailer.message import Mail, MailTemplate
from mailer.smtp import MAX_IDLE_CONNECTIONS, SmtpSender

pytestmark = pytest.mark.integration


def mail(n: int) -> Mail:
    return MailTemplate("shop@mini-ec.test").build(
        to="alice@example.com", subject=f"mail {n}", message_id=f"<{n}@mini-ec>",
        date=0.0, headers={}, body="hello")


async def test_mails_in_a_row_share_one_connection_and_all_arrive(tmp_path):
    controller, _ = smtp_sink.start(tmp_path, port=free_port())
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
        for n in range(5):
            await sender.send(mail(n))
        assert len(sender.idle_connections) == 1
        assert len(smtp_sink.mails_in(tmp_path)) == 5
    finally:
        controller.stop()


async def test_concurrent_mails_keep_at_most_the_idle_limit_open(tmp_path):
    controller, _ = smtp_sink.start(tmp_path, port=free_port())
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
        await asyncio.gather(*(sender.send(mail(n)) for n in range(MAX_IDLE_CONNECTIONS + 4)))
        assert len(sender.idle_connections) == MAX_IDLE_CONNECTIONS
        assert len(smtp_sink.mails_in(tmp_path)) == MAX_IDLE_CONNECTIONS + 4
    finally:
        controller.stop()


async def test_the_idle_limit_is_the_one_given(tmp_path):
    controller, _ = smtp_sink.start(tmp_path, port=free_port())
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5,
                            max_idle=MAX_IDLE_CONNECTIONS + 2)
        await asyncio.gather(*(sender.send(mail(n)) for n in range(MAX_IDLE_CONNECTIONS + 4)))
        assert len(sender.idle_connections) == MAX_IDLE_CONNECTIONS + 2
    finally:
        controller.stop()


async def test_after_the_server_went_away_and_came_back_a_new_connection_is_used(tmp_path):
    port = free_port()
    controller, _ = smtp_sink.start(tmp_path, port=port)
    sender = SmtpSender("127.0.0.1", port, timeout=5)
    await sender.send(mail(1))
    controller.stop()  # closes the idle connection from the server's side
    with pytest.raises(aiosmtplib.SMTPException):  # transient: the consumer retries it later
        await sender.send(mail(2))
    controller, _ = smtp_sink.start(tmp_path, port=port)
    try:
        await sender.send(mail(3))
    finally:
        controller.stop()
    assert [m["Subject"] for m in smtp_sink.mails_in(tmp_path)] == ["mail 1", "mail 3"]


async def test_a_body_with_lone_dots_line_breaks_and_non_ascii_arrives_whole(tmp_path):
    """The DATA end marker ("." alone on a line) inside the text is dot-stuffed by
    aiosmtplib's `sendmail`, which the builder relies on: the mail ends where it should."""
    body = "Grüße\n.\nQUIT\r\n.\r\nMAIL FROM:<evil@example.com>\n..two dots\n"
    controller, _ = smtp_sink.start(tmp_path, port=free_port())
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
        await sender.send(MailTemplate("shop@mini-ec.test").build(
            to="alice@example.com", subject="Grüße", message_id="<dots@mini-ec>",
            date=0.0, headers={}, body=body))
        await sender.send(mail(2))  # the session is still in step after it
    finally:
        controller.stop()
    first, second = smtp_sink.arrivals(tmp_path)
    assert first["Subject"] == "Grüße"
    assert first.get_content().replace("\r\n", "\n") == body.replace("\r\n", "\n")
    assert second["Subject"] == "mail 2"


async def test_a_non_ascii_address_goes_with_smtputf8_or_not_at_all(tmp_path):
    to = "ユーザー@example.com"
    utf8_mail = MailTemplate("shop@mini-ec.test").build(
        to=to, subject="s", message_id="<utf8@mini-ec>", date=0.0, headers={}, body="b")
    for offered in (False, True):
        controller = Controller(smtp_sink.SaveToDirectory(tmp_path), hostname="127.0.0.1",
                                port=free_port(), enable_SMTPUTF8=offered)
        controller.start()
        try:
            sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
            if offered:
                await sender.send(utf8_mail)
            else:
                with pytest.raises(aiosmtplib.SMTPNotSupported):  # transient, as before
                    await sender.send(utf8_mail)
                assert smtp_sink.mails_in(tmp_path) == []
        finally:
            controller.stop()
    [received] = smtp_sink.mails_in(tmp_path)
    assert received["To"] == to
