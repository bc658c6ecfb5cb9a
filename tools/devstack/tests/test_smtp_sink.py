"""The local SMTP sink keeps each mail as a file named after its Message-ID; a resend of the
same Message-ID is kept too, numbered, so duplicates stay visible."""

import smtplib

import pytest

from devstack import smtp_sink
from devstack.stack import free_port

pytestmark = pytest.mark.integration


def send(port: int, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("shop@example.com", ["alice@example.com"], message)


def mail(message_id: str | None) -> bytes:
    header = f"Message-ID: {message_id}\r\n" if message_id else ""
    return (f"{header}From: shop@example.com\r\nTo: alice@example.com\r\n"
            "Subject: Thank you\r\n\r\nYour order.\r\n").encode()


def test_mails_are_named_by_message_id_and_a_resend_is_kept_numbered(tmp_path):
    port = free_port()
    controller, _ = smtp_sink.start(tmp_path, port=port)
    try:
        send(port, mail("<e1@mini-ec>"))
        send(port, mail("<e1@mini-ec>"))
        send(port, mail(None))
    finally:
        controller.stop()
    names = {p.name for p in tmp_path.glob("*.eml")}
    assert {"e1@mini-ec.eml", "e1@mini-ec.2.eml"} < names
    assert len(names) == 3  # the mail without a Message-ID got a name of its own
    assert [m["Subject"] for m in smtp_sink.mails_in(tmp_path)] == ["Thank you"] * 3
