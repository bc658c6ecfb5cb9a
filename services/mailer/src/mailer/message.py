"""A plain-text mail as RFC 5322 bytes, written directly instead of through `EmailMessage`.

The email package parsed and refolded every header it was given, and that was about a
quarter of the mailer's CPU. A mailer mail is always the same shape: a few headers and one
text/plain part. This module writes that shape with a template. Every value that comes
from an event goes through one of three encoders here, and each one refuses CR and LF, so
no value can start a header of its own:

- `address_header` for To. The address is the bare addr-spec the contract validated. It is
  UTF-8 as it stands when it is not ASCII (RFC 6532), and the mail then needs the server's
  SMTPUTF8, as it did with the email package.
- `unstructured_header` for Subject and X-Correlation-ID. Non-ASCII text becomes RFC 2047
  encoded words.
- `text_body` for the body. It is 7bit when it is ASCII with short lines, otherwise
  quoted-printable UTF-8, so it never needs 8BITMIME.

The From header depends only on the settings. `MailTemplate` folds it once with the email
package (`policy.SMTP`) and keeps the result.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.utils import formatdate, parseaddr

# RFC 5322 2.1.1: a line SHOULD stay within 78 characters and MUST stay within 998.
MAX_LINE = 78
MAX_HARD_LINE = 998
# An encoded word is at most 75 characters (RFC 2047 section 2), a line at most 78 where it
# can be. "=?utf-8?b?" and "?=" take 12 characters. On a continuation line (" " + word),
# 63 are left for base64: 45 bytes of UTF-8 per word. The first word shares its line with
# the header's name and gets less (`_first_word_bytes`).
_WORD_BYTES = 45

# Printable ASCII and tab: text that a header can carry as it is; and a body, with line ends.
_PLAIN_TEXT = re.compile(r"[\t\x20-\x7e]*")
_PLAIN_BODY = re.compile(r"[\t\r\n\x20-\x7e]*")
# An addr-spec as the contract normalises it: local@domain with no quoting, no comments, no
# whitespace or controls. Anything else (a display name, a second address, a line break) is
# refused, not repaired.
_ADDR_SPEC = re.compile(r'[^\s<>()\[\],;:"\\@\x00-\x1f\x7f]+@[^\s<>()\[\],;:"\\@\x00-\x1f\x7f]+')


class UnsafeMail(ValueError):
    """A value that cannot go into the mail as given: a line break, not an address, a date
    no Date header can hold. The same event fails the same way every time."""


def _refuse_line_breaks(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise UnsafeMail(f"{name}: a line break in {value!r}")


def unstructured_header(name: str, value: str) -> bytes:
    """`Name: value` with CRLF, for free text (RFC 5322 unstructured).

    Printable ASCII goes as it is, folded at spaces when it is long. Anything else is
    written as RFC 2047 base64 encoded words, each on its own folded line.
    """
    _refuse_line_breaks(name, value)
    if _PLAIN_TEXT.fullmatch(value):
        line = f"{name}: {value}"
        if len(line) <= MAX_LINE:
            return f"{line}\r\n".encode("ascii")
        folded = _fold_at_spaces(line)
        if all(len(part) <= MAX_HARD_LINE for part in folded.split("\r\n")):
            return f"{folded}\r\n".encode("ascii")
        # A run without spaces too long for one line: encoded words can be split anywhere.
    raw = value.encode("utf-8")
    words = []
    start = 0
    size = _first_word_bytes(name)
    while start < len(raw):
        end = min(start + size, len(raw))
        size = _WORD_BYTES
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # don't split a character
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:end]).decode('ascii')}?=")
        start = end
    # Whitespace between two encoded words is dropped by the reader (RFC 2047 section 6.2).
    return (f"{name}: " + "\r\n ".join(words) + "\r\n").encode("ascii")


def _first_word_bytes(name: str) -> int:
    """Bytes of UTF-8 in the first encoded word so that `Name: =?utf-8?b?...?=` fits in
    MAX_LINE; at least 4, one character of any length, so a split always moves on."""
    base64_chars = MAX_LINE - len(name) - 2 - 12
    return max(4, min(_WORD_BYTES, base64_chars // 4 * 3))


def _fold_at_spaces(line: str) -> str:
    """Break a long header line before spaces so that each part fits in MAX_LINE where it
    can (RFC 5322 folding: the CRLF goes before the whitespace, which stays)."""
    parts: list[str] = []
    current = ""
    for i, piece in enumerate(line.split(" ")):
        candidate = piece if i == 0 else f"{current} {piece}"
        # Not between the name and the first word (a long token then stays on the name's
        # line), and only before a word: a line of nothing but whitespace is not allowed.
        if i > 1 and piece and len(candidate) > MAX_LINE and current.strip():
            parts.append(current)
            current = f" {piece}"
        else:
            current = candidate
    parts.append(current)
    return "\r\n".join(parts)


def address_header(name: str, address: str) -> tuple[bytes, bool]:
    """(`Name: address` with CRLF, whether it needs SMTPUTF8) for one bare addr-spec."""
    _refuse_line_breaks(name, address)
    if not _ADDR_SPEC.fullmatch(address) or len(address) > MAX_HARD_LINE - len(name) - 2:
        raise UnsafeMail(f"{name}: not a single plain address: {address!r}")
    line = f"{name}: {address}\r\n"
    if address.isascii():
        return line.encode("ascii"), False
    return line.encode("utf-8"), True


def text_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body with CRLF line ends) for a text/plain UTF-8 part."""
    lines = text.encode("utf-8").splitlines()  # CR, LF and CRLF all end a line
    if _PLAIN_BODY.fullmatch(text) and all(len(line) <= MAX_LINE for line in lines):
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    # CRLF in, CRLF out; soft breaks keep every encoded line within 76 characters.
    return "quoted-printable", binascii.b2a_qp(b"\r\n".join(lines) + b"\r\n", istext=True)


@dataclass(frozen=True, slots=True)
class Mail:
    """What the SMTP client needs: the envelope and the message as it goes after DATA."""

    sender: str
    recipient: str
    message_id: str
    content: bytes
    smtputf8: bool = False


class MailTemplate:
    """Builds the mails sent from one address; the From header is folded once, here."""

    def __init__(self, mail_from: str):
        _refuse_line_breaks("From", mail_from)
        display_name, sender = parseaddr(mail_from)
        # It goes on the MAIL FROM line too: one plain ASCII address, nothing that could
        # end the command (a non-ASCII one would need SMTPUTF8 for every mail).
        if not (_ADDR_SPEC.fullmatch(sender) and sender.isascii()):
            raise UnsafeMail(f"From: not a plain ASCII mail address: {mail_from!r}")
        username, _, domain = sender.rpartition("@")
        header = email.policy.SMTP.header_factory(
            "From", Address(display_name=display_name, username=username, domain=domain))
        # policy.SMTP folds with CRLF and writes a non-ASCII display name as encoded words.
        self._from = header.fold(policy=email.policy.SMTP).encode("ascii")
        self.sender = sender

    def build(self, *, to: str, subject: str, message_id: str, date: float,
              headers: dict[str, str], body: str) -> Mail:
        """One mail; `headers` are further unstructured headers (name: value), in order."""
        to_line, smtputf8 = address_header("To", to)
        encoding, content = text_body(body)
        parts = [
            self._from,
            to_line,
            unstructured_header("Subject", subject),
            b"Date: " + formatdate(date, usegmt=True).encode("ascii") + b"\r\n",
            unstructured_header("Message-ID", message_id),
        ]
        parts.extend(unstructured_header(name, value) for name, value in headers.items())
        parts.append(b'Content-Type: text/plain; charset="utf-8"\r\n'
                     b"Content-Transfer-Encoding: " + encoding.encode("ascii") + b"\r\n"
                     b"MIME-Version: 1.0\r\n\r\n")
        parts.append(content)
        return Mail(sender=self.sender, recipient=to, message_id=message_id,
                    content=b"".join(parts), smtputf8=smtputf8)
