"""A local SMTP server that keeps every mail it receives as an .eml file (like Mailpit, offline).

    python -m devstack.smtp_sink --port 1025 --dir var/mail

It can also refuse service for a while (`--fail-for`, or `fail_until` when embedded), which
is how the tests play a mail server that is down, refuse each mail's first try
(`refuse_first_tries`: a greylisting server), and it can be slow (`--delay`). Like
Mailpit it offers PIPELINING (RFC 2920), unless told not to (`pipelining=False`).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.parser
import email.policy
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller

_HEADERS = email.parser.BytesParser(policy=email.policy.compat32)


class SaveToDirectory:
    """aiosmtpd handler: one file per accepted mail, named after its Message-ID."""

    def __init__(self, directory: Path, delay_seconds: float = 0.0, pipelining: bool = True):
        self.directory = directory
        self.pipelining = pipelining
        self.directory.mkdir(parents=True, exist_ok=True)
        self.delay_seconds = delay_seconds
        self.fail_until = 0.0  # time.monotonic() before which mails are refused with 451
        # 451 to the first try of each Message-ID, 250 to the next (greylisting).
        self.refuse_first_tries = False
        self._tried: set[str] = set()
        self.holding = 0  # mails fully received whose 250 is being held back (`delay`)

    async def handle_EHLO(self, server, session, envelope, hostname,  # noqa: N802 (aiosmtpd API)
                          responses: list[str]) -> list[str]:
        # aiosmtpd reads one command at a time, so pipelined commands are simply queued;
        # it only doesn't say so. This hook replaces its EHLO, hence the host name.
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd API)
        if time.monotonic() < self.fail_until:
            return "451 4.3.0 mail server temporarily unavailable (test fault)"
        # Only the headers, read as they are: the file name is all this needs, and a full
        # parse cost the sink more CPU per mail than the mailer spends building one.
        headers = _HEADERS.parsebytes(envelope.content, headersonly=True)
        message_id = str(headers.get("Message-ID") or "").strip()
        if self.refuse_first_tries and message_id not in self._tried:
            self._tried.add(message_id)
            return "451 4.7.1 greylisted, try again later (test fault)"
        if self.delay_seconds:
            self.holding += 1
            try:
                await asyncio.sleep(self.delay_seconds)  # the behaviour under test: slow
            finally:
                self.holding -= 1
        name = (message_id or f"<{uuid.uuid4()}>").strip("<>").replace("/", "_")
        target = self.directory / f"{name}.eml"
        # Same Message-ID twice (a resend): keep both, numbered, so duplicates stay visible.
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{name}.{n}.eml"
        target.write_bytes(envelope.content)
        return "250 OK"


def mails_in(directory: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(directory.glob("*.eml"))
    ]


def mails_received(directory: Path) -> list[tuple[float, email.message.EmailMessage]]:
    """(when it was received: the file's mtime, time.time()'s clock; the mail) for each."""
    return [
        (p.stat().st_mtime, email.message_from_bytes(p.read_bytes(), policy=email.policy.default))
        for p in sorted(directory.glob("*.eml"))
    ]


def arrivals(directory: Path) -> list[email.message.EmailMessage]:
    """The mails in the order the server accepted them (each file is written once, on
    arrival: its modification time, in nanoseconds)."""
    paths = sorted(directory.glob("*.eml"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in paths]


def start(directory: Path, host: str = "127.0.0.1", port: int = 1025,
          delay_seconds: float = 0.0, pipelining: bool = True,
          ) -> tuple[Controller, SaveToDirectory]:
    handler = SaveToDirectory(directory, delay_seconds, pipelining)
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    return controller, handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=Path("var/mail"))
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to hold each mail")
    args = parser.parse_args()
    controller, _ = start(args.dir, args.host, args.port, args.delay)
    print(f"smtp sink on {args.host}:{args.port}, saving to {args.dir}/", flush=True)
    try:
        asyncio.run(_forever())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


async def _forever() -> None:
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
