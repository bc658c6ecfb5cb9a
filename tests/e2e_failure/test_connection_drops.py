"""The mailer's broker connections taken away under load (issue 27, findings 1 and 2): the
real mailer process, the shared RabbitMQ (a throwaway vhost; its connections closed and held
off through the management API, as an admin or a network fault would), a real SMTP server
that greylists or is slow. Every mail goes out once; nothing is parked."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from devstack import broker_faults, events, smtp_sink, throwaway
from devstack.smtp_sink import mails_in
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually, eventually_async
from messaging.operations import dlq
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import declare_exchange

pytestmark = pytest.mark.e2e

MAILS = 40
DROPS = 5


class Mailer:
    """The mailer as a process in its own vhost, with an SMTP sink the test can make slow or
    greylisting."""

    def __init__(self, tmp: Path, vhost: str, url: str):
        self.vhost, self.url = vhost, url
        self.mail_dir = tmp / "mail"
        port = free_port()
        self.controller, self.smtp = smtp_sink.start(self.mail_dir, port=port)
        self.stack = Stack(
            rabbitmq_url=url,
            database_urls={s: f"sqlite+aiosqlite:///{tmp}/{s}.db" for s in SERVICES},
            smtp_port=port, ports={s: free_port() for s in SERVICES}, log_dir=tmp,
            # Every first try refused while no retry copy can be made is, to the kill switch,
            # an outage: it would pause, and each probe (another mail's first try) would fail
            # too (docs/failure.md#the-kill-switch, greylisting). These tests are about the
            # connections, so the switch is set out of reach.
            extra_env={"LOG_LEVEL": "INFO", "RETRY_DELAYS": "1,2,4",
                       "KILL_SWITCH_MIN_MESSAGES": "100000"},
        )

    def start(self) -> None:
        self.stack.start("mailer")
        self.stack.wait_ready("mailer", timeout=40)

    def stop(self) -> None:
        self.stack.stop()
        self.controller.stop()

    def message_ids(self) -> collections.Counter[str]:
        return collections.Counter(str(m["Message-ID"]) for m in mails_in(self.mail_dir))

    async def parked(self) -> list[str]:
        """What is in mailer.events.dlq: each message's id and headers."""
        connection = await aio_pika.connect(self.url)
        try:
            return [f"{m.message_id} {m.headers}"
                    for m in await dlq.show(connection, "mailer", limit=100)]
        finally:
            await connection.close()


@pytest.fixture
def mailer(tmp_path) -> Iterator[Mailer]:
    with throwaway.throwaway_vhost("drops") as (vhost, url):
        running = Mailer(tmp_path, vhost, url)
        try:
            running.start()
            yield running
        finally:
            running.stop()


class Publisher:
    """A confirmed publisher of OrderPaid events on shop.events, on its own connection."""

    def __init__(self, url: str):
        self._url = url

    async def __aenter__(self) -> Publisher:
        self._connection = await aio_pika.connect(self._url)
        self._exchange = await declare_exchange(await open_confirm_channel(self._connection))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._connection.close()

    async def paid(self, n: int) -> list[str]:
        """n OrderPaid events; the Message-IDs their mails will carry."""
        paid = [events.order_paid() for _ in range(n)]
        for event in paid:
            message = build_message(
                event.to_json(), message_id=str(event.event_id),
                correlation_id=event.correlation_id, event_type=event.event_type,
                timestamp=event.occurred_at)
            await publish_confirmed(self._exchange, message, event.routing_key)
        return [f"<{e.event_id}@mini-ec>" for e in paid]


async def test_a_publishing_connection_away_while_greylisted_parks_nothing_and_sends_each_once(
    mailer,
):
    """Finding 1: each mail's first try gets 451, so each needs a copy to a wait queue,
    while the `mailer-publish` connection is closed and kept away for 6 s (the consuming
    one stays). The originals wait unacked for the connection; none is rejected into the
    DLQ, and each mail goes out once its retry comes."""
    mailer.smtp.refuse_first_tries = True
    async with Publisher(mailer.url) as publish:  # connected before the limit is set
        with broker_faults.kept_away(mailer.vhost, "mailer-publish"):
            expected = await publish.paid(MAILS)
            await asyncio.sleep(6)  # the outage itself, not a wait for a result
            assert mailer.message_ids() == {}, "every first try is refused"
    sent = eventually(lambda: _all_sent(mailer, expected), timeout=60,
                      message="every mail sent after the connection came back")
    assert all(count == 1 for count in sent.values()), sent
    assert await mailer.parked() == []


async def test_a_consuming_connection_dropped_during_slow_smtp_exchanges_sends_each_mail_once(
    mailer,
):
    """Finding 2: the server takes 0.3 s to answer the end of each mail; the consuming
    connection is closed five times while mails wait for that answer. A mail whose end was
    written is sent, whatever happens to the message's task; the redelivered copy finds it
    sent."""
    mailer.smtp.delay_seconds = 0.3
    expected: list[str] = []
    closed: list[str] = []
    async with Publisher(mailer.url) as publish:
        for _ in range(DROPS):
            consuming = broker_faults.wait_listed(mailer.vhost, "mailer", exclude=closed)
            expected += await publish.paid(MAILS // DROPS)
            await eventually_async(lambda: _true(mailer.smtp.holding > 0), timeout=30,
                                   message="a mail's end written, its 250 held back")
            assert broker_faults.close_connections(consuming) == 1
            closed += consuming
    await eventually_async(lambda: _true(_all_sent(mailer, expected) is not None), timeout=90,
                           message="every mail sent")
    # Settled: nothing is still on its way to the sink.
    eventually(lambda: throwaway.queue_depth(mailer.vhost, "mailer.events") == 0, timeout=30,
               message="mailer.events drained")
    sent = mailer.message_ids()
    assert set(sent) == set(expected)
    assert {m: c for m, c in sent.items() if c > 1} == {}
    assert await mailer.parked() == []


def _all_sent(mailer: Mailer, expected: list[str]) -> collections.Counter[str] | None:
    sent = mailer.message_ids()
    return sent if set(expected) <= set(sent) else None


async def _true(value: bool) -> bool:
    return value
