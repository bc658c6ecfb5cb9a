"""SmtpSender keeps connections open between mails, and never trusts one the server closed."""

import asyncio
from email.message import EmailMessage

import aiosmtplib
import pytest

from devstack import smtp_sink
from devstack.stack import free_port
from mailer.smtp import MAX_IDLE_CONNECTIONS, SmtpSender

pytestmark = pytest.mark.integration


def mail(n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"] = "shop@mini-ec.test", "alice@example.com"
    message["Subject"], message["Message-ID"] = f"mail {n}", f"<{n}@mini-ec>"
    message.set_content("hello")
    return message


async def test_mails_in_a_row_share_one_connection_and_all_arrive(tmp_path):
    controller, _ = smtp_sink.start(tmp_path, port=free_port())
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
        for n in range(5):
            await sender.send(mail(n))
        assert len(sender._idle) == 1
        assert len(smtp_sink.mails_in(tmp_path)) == 5
    finally:
        controller.stop()


async def test_concurrent_mails_keep_at_most_the_idle_limit_open(tmp_path):
    controller, _ = smtp_sink.start(tmp_path, port=free_port())
    try:
        sender = SmtpSender("127.0.0.1", controller.port, timeout=5)
        await asyncio.gather(*(sender.send(mail(n)) for n in range(MAX_IDLE_CONNECTIONS + 4)))
        assert len(sender._idle) == MAX_IDLE_CONNECTIONS
        assert len(smtp_sink.mails_in(tmp_path)) == MAX_IDLE_CONNECTIONS + 4
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
