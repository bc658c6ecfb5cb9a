"""The mail builder: what it writes reads back, through the email package's own parser, as
exactly the headers and text it was given. Non-ASCII is encoded, long lines are folded or
quoted-printable, and a line break in any value from an event never becomes a header."""

from __future__ import annotations

import email
import email.policy
import uuid
from email.message import EmailMessage
from email.utils import formatdate, parsedate_to_datetime

import pytest

from devstack import events
from devstack.stack import free_port
from mailer import handlers
from mailer.message import Mail, MailTemplate, UnsafeMail, address_header, unstructured_header
from mailer.settings import Settings
from mailer.spec import subscriptions
from messaging.settlement import PermanentError

pytestmark = pytest.mark.unit

TEMPLATE = MailTemplate("Mini EC <shop@mini-ec.test>")
HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "X-Correlation-ID", "Content-Type",
           "Content-Transfer-Encoding", "MIME-Version"]


def build(*, to: str = "alice@example.com", subject: str = "Thank you for your order",
          correlation: str = "c-1", body: str = "Hello alice,\n") -> Mail:
    return TEMPLATE.build(to=to, subject=subject, message_id="<e-1@mini-ec>", date=0.0,
                          headers={"X-Correlation-ID": correlation}, body=body)


def text_of(message: EmailMessage) -> str:
    """The text part as a reader sees it; the parser keeps the CRLF line ends of the wire."""
    return message.get_content().replace("\r\n", "\n")


def parsed(mail: Mail) -> EmailMessage:
    message = email.message_from_bytes(mail.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects, message.defects
    return message


def lines_of(mail: Mail) -> list[bytes]:
    assert mail.content.endswith(b"\r\n")
    assert b"\n" not in mail.content.replace(b"\r\n", b"")  # CRLF only, no bare CR or LF
    assert b"\r" not in mail.content.replace(b"\r\n", b"")
    return mail.content.split(b"\r\n")[:-1]


def test_a_plain_mail_has_every_header_once_and_its_text():
    mail = build()
    message = parsed(mail)
    assert list(message.keys()) == HEADERS
    assert message["From"] == "Mini EC <shop@mini-ec.test>"
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Thank you for your order"
    assert message["Message-ID"] == "<e-1@mini-ec>"
    assert message["X-Correlation-ID"] == "c-1"
    assert parsedate_to_datetime(message["Date"]).timestamp() == 0.0
    assert f"\r\nDate: {formatdate(0.0, usegmt=True)}\r\n".encode() in mail.content
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert text_of(message) == "Hello alice,\n"
    assert (mail.sender, mail.recipient, mail.smtputf8) == ("shop@mini-ec.test",
                                                             "alice@example.com", False)
    assert all(len(line) <= 78 for line in lines_of(mail))


def test_it_reads_back_as_the_email_package_would_have_written_it():
    """The mail the mailer sent before, through EmailMessage, parses to the same headers."""
    paid = events.order_paid()
    old = EmailMessage()
    old["From"], old["To"] = "Mini EC <shop@mini-ec.test>", paid.data.email
    old["Subject"] = handlers.subject_for(paid)
    old["Date"] = formatdate(paid.occurred_at.timestamp(), usegmt=True)
    old["Message-ID"] = handlers.message_id_for(paid)
    old[handlers.CORRELATION_HEADER] = paid.correlation_id
    old.set_content(handlers.body_for(paid))
    before = email.message_from_bytes(old.as_bytes(), policy=email.policy.default)

    after = parsed(handlers.compose(paid, TEMPLATE))
    assert sorted(after.items()) == sorted(before.items())
    assert text_of(after) == text_of(before)


@pytest.mark.parametrize("subject", [
    "Danke für Ihre Bestellung",
    "ご注文ありがとうございます" * 8,  # several encoded words, none splitting a character
    "emoji 📦 " * 20,
    "=?utf-8?b?Zm9v?= looks encoded but is text",
    "tab\tand trailing space ",
])
def test_non_ascii_and_odd_subjects_are_encoded_and_read_back_unchanged(subject):
    mail = build(subject=subject)
    assert mail.content.isascii()
    assert all(len(line) <= 78 for line in lines_of(mail))
    message = parsed(mail)
    assert list(message.keys()) == HEADERS
    if "looks encoded" not in subject:  # RFC 2047 readers decode what looks like a word
        assert message["Subject"] == subject


def test_a_long_ascii_subject_is_folded_at_spaces_and_reads_back_unchanged():
    subject = " ".join(f"word{n}" for n in range(60))
    line = unstructured_header("Subject", subject)
    assert b"=?" not in line  # readable as it is, not encoded
    assert all(len(part) <= 78 for part in line.split(b"\r\n"))
    assert parsed(build(subject=subject))["Subject"] == subject


def test_a_long_token_stays_whole_when_it_fits_in_one_line():
    correlation = "c" * 128  # the longest correlation id the contract allows
    line = unstructured_header("X-Correlation-ID", correlation)
    assert line == f"X-Correlation-ID: {correlation}\r\n".encode()  # greppable, as it was
    token = "x" * 2000  # past RFC 5322's 998: encoded words, which can be split anywhere
    mail = build(subject=token)
    assert all(len(line) <= 78 for line in lines_of(mail))
    assert parsed(mail)["Subject"] == token


@pytest.mark.parametrize(("body", "encoding"), [
    ("Grüße, ヤマト運輸\n", "quoted-printable"),
    ("a line of " + "x" * 2000 + "\nand a short one\n", "quoted-printable"),
    ("control \x00\x0b\x1b characters\n", "quoted-printable"),
    ("ends with spaces   \nand = signs =\n", "7bit"),  # plain ASCII, as the email package did
])
def test_non_ascii_long_or_odd_bodies_are_quoted_printable_and_read_back(body, encoding):
    mail = build(body=body)
    assert mail.content.isascii()
    assert all(len(line) <= 78 for line in lines_of(mail))
    message = parsed(mail)
    assert message["Content-Transfer-Encoding"] == encoding
    assert text_of(message) == body


def test_line_ends_in_a_body_become_crlf_and_a_lone_dot_stays_text():
    mail = build(body="one\rtwo\r\nthree\nfour\n.\nfive")
    lines = lines_of(mail)
    assert lines[-6:] == [b"one", b"two", b"three", b"four", b".", b"five"]
    assert text_of(parsed(mail)) == "one\ntwo\nthree\nfour\n.\nfive\n"


@pytest.mark.parametrize("hostile", [
    "c-1\r\nBcc: victim@example.com",
    "c-1\nBcc: victim@example.com",
    "c-1\rBcc: victim@example.com",
])
def test_a_line_break_in_a_header_value_is_refused(hostile):
    for fields in ({"subject": hostile}, {"correlation": hostile},
                   {"to": "alice@example.com" + hostile.removeprefix("c-1")}):
        with pytest.raises(UnsafeMail, match="a line break"):
            build(**fields)


@pytest.mark.parametrize("address", [
    "alice@example.com, victim@example.com",
    "Alice <alice@example.com>",
    "alice@example.com victim@example.com",
    '"a b"@example.com',
    "alice@example.com>",
    "alice",
    "alice@@example.com",
    "alice@example.com\x00",
    "alice@example.com\u2028Bcc: victim@example.com",  # a Unicode line separator
])
def test_anything_but_one_plain_address_is_refused_as_a_recipient(address):
    with pytest.raises(UnsafeMail, match="not a single plain address"):
        address_header("To", address)


def test_a_non_ascii_address_is_utf8_in_the_header_and_asks_for_smtputf8():
    mail = build(to="ユーザー@bücher.example")
    assert mail.smtputf8
    assert b"To: \xe3\x83\xa6" in mail.content  # RFC 6532: UTF-8 as it is, no encoded word
    assert parsed(mail)["To"] == "ユーザー@bücher.example"


def test_a_non_ascii_sender_name_is_encoded_once_in_the_template():
    template = MailTemplate("Mini EC 商店 <shop@mini-ec.test>")
    mail = template.build(to="alice@example.com", subject="s", message_id="<m@mini-ec>",
                          date=0.0, headers={}, body="b")
    assert mail.content.isascii()
    assert str(parsed(mail)["From"]) == "Mini EC 商店 <shop@mini-ec.test>"
    assert mail.sender == "shop@mini-ec.test"


@pytest.mark.parametrize("mail_from", ["Mini EC <shop@mini-ec.test>\r\nBcc: victim@example.com",
                                       "nobody"])
def test_a_sender_that_cannot_head_a_mail_is_refused(mail_from):
    with pytest.raises(UnsafeMail):
        MailTemplate(mail_from)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Mail] = []

    async def send(self, mail: Mail) -> None:
        self.sent.append(mail)


async def test_an_event_whose_address_would_inject_a_header_is_permanent_and_sends_nothing():
    """The contract refuses such an address; an event that got past it anyway goes to the
    DLQ at once (PermanentError, from the subscription's step), since no retry could make
    it safe. The handler itself names no transport: it raises UnsafeMail."""
    paid = events.order_paid()
    hostile = paid.model_copy(update={"data": paid.data.model_copy(
        update={"email": "alice@example.com\r\nBcc: victim@example.com"})})
    recorder = Recorder()
    with pytest.raises(UnsafeMail, match="a line break"):
        await handlers.send_mail(hostile, sender=recorder, template=TEMPLATE)
    assert recorder.sent == []

    # No SMTP server on that port: reaching it would be a connect error, not this one.
    [step, *_] = [s.before for s in subscriptions(Settings(smtp_port=free_port()))]
    assert step is not None
    with pytest.raises(PermanentError, match="a line break"):
        await step(hostile)


async def test_a_shipment_with_line_breaks_in_its_carrier_keeps_them_in_the_body():
    paid = events.order_paid()
    shipped = events.order_shipped(paid)
    shipped = shipped.model_copy(update={"data": shipped.data.model_copy(
        update={"carrier": "Post\r\nBcc: victim@example.com\r\n.\r\nQUIT"})})
    recorder = Recorder()
    await handlers.send_mail(shipped, sender=recorder, template=TEMPLATE)
    [mail] = recorder.sent
    message = parsed(mail)
    assert list(message.keys()) == HEADERS
    assert "Bcc: victim@example.com" in text_of(message)
    assert mail.message_id == f"<{shipped.event_id}@mini-ec>"
    assert uuid.UUID(message["Message-ID"].strip("<>").removesuffix("@mini-ec")) == \
        shipped.event_id
