"""The kill switch across processes, with the default settings: the mail server refuses
connections for 75 s while a payment arrives every 2.5 s. Nothing is parked in a DLQ, the
mailer's queue holds the waiting work, every mail goes out exactly once within a minute
after the mail server accepts again, and points, audit and shipping keep up throughout.
Then an operator pauses and resumes the mailer with the CLI.

About two minutes: the outage is the scenario (the issue's), not a setting to shrink."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import aio_pika
import httpx
import pytest

from conftest import start_stack
from devstack import smtp_sink
from devstack.scrape import metric
from devstack.smtp_sink import mails_in
from devstack.stack import free_port
from devstack.wait import eventually
from messaging import spec
from messaging.topology import QueueTopology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

OUTAGE_SECONDS = 75
PAYMENT_EVERY_SECONDS = 2.5
TOKEN = "kill-switch-test-token"
MAILER = QueueTopology.for_service("mailer")


def pay(url: str) -> dict:
    response = httpx.post(f"{url}/payments", timeout=10, json={
        "order_id": str(uuid.uuid4()), "customer_id": "ks-buyer",
        "email": "buyer@example.com", "amount": 1200, "currency": "JPY"})
    assert response.status_code == 201, response.text
    return response.json()


def get(url: str, path: str, **params):
    return httpx.get(f"{url}{path}", params=params, timeout=10).json()


def handled_elsewhere(stack, order_id: str) -> bool:
    """Points, audit and shipping have each done their part for the order."""
    entries = get(stack.url("points"), "/customers/ks-buyer/points")["entries"]
    return (any(e["order_id"] == order_id for e in entries)
            and len(get(stack.url("audit"), "/events", order_id=order_id)) == 2
            and len(get(stack.url("shipping"), "/shipments", order_id=order_id)) == 1)


def exact_counts(url: str, queues: list[str]) -> dict[str, int]:
    """Ready messages per queue, from a passive declare (exact, unlike the management API)."""
    async def count() -> dict[str, int]:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            return {q: (await channel.declare_queue(q, passive=True))
                    .declaration_result.message_count for q in queues}
        finally:
            await connection.close()
    return asyncio.run(count())


def test_a_mail_server_down_for_75_s_parks_nothing_and_every_mail_goes_out_once_after(
    vhost, tmp_path
):
    _, url = vhost
    smtp_port = free_port()  # nothing listens there yet: connections are refused
    stack = start_stack(tmp_path, url, smtp_port, ADMIN_TOKEN=TOKEN)
    controller = None
    try:
        mailer = stack.url("mailer")
        payments, states, depths = [], set(), []
        started = time.monotonic()
        next_payment = started
        while time.monotonic() - started < OUTAGE_SECONDS:
            payments.append(pay(stack.url("payment")))
            if len(payments) > 2:  # the others keep up: the payment of 5 s ago is done
                earlier = payments[-3]["order_id"]
                eventually(lambda o=earlier: handled_elsewhere(stack, o), timeout=5,
                           message=f"points, audit, shipping for {earlier}")
            ready = httpx.get(f"{mailer}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text  # paused on purpose is healthy
            states.add(ready.json()["consumer"]["state"])
            depths.append(exact_counts(url, [MAILER.name])[MAILER.name])
            next_payment += PAYMENT_EVERY_SECONDS
            time.sleep(max(0.0, next_payment - time.monotonic()))  # the scenario's pace

        dlqs = [QueueTopology.for_service(s.name).dlq for s in spec.consumers()]
        assert exact_counts(url, dlqs) == dict.fromkeys(dlqs, 0)
        assert "paused" in states, states
        assert max(depths[-5:]) > 0, depths  # the waiting work is in the mailer's queue
        assert metric(mailer, "consumer_pauses_total", by="switch") >= 1

        controller, _ = smtp_sink.start(tmp_path / "mail", port=smtp_port)
        back = time.monotonic()

        for p in payments:
            eventually(lambda p=p: len(get(mailer, "/mails", order_id=p["order_id"])) == 2,
                       timeout=max(1.0, 60 - (time.monotonic() - back)),
                       message=f"both mails of {p['order_id']} within a minute")
        eventually(lambda: exact_counts(url, [MAILER.name, *map(MAILER.retry_queue,
                                                                MAILER.retry_delays)])
                   == dict.fromkeys([MAILER.name, *map(MAILER.retry_queue,
                                                       MAILER.retry_delays)], 0),
                   timeout=30, message="mailer queues drained")
        print(f"{len(payments)} payments; every mail sent {time.monotonic() - back:.0f}s "
              f"after the mail server came back; the switch paused "
              f"{metric(mailer, 'consumer_pauses_total', by='switch'):.0f} times")
        sent_ids = [m["message_id"] for p in payments
                    for m in get(mailer, "/mails", order_id=p["order_id"])]
        on_the_wire = [m["Message-ID"] for m in mails_in(tmp_path / "mail")]
        assert len(sent_ids) == 2 * len(payments)
        assert sorted(on_the_wire) == sorted(sent_ids)  # each exactly once
        assert exact_counts(url, dlqs) == dict.fromkeys(dlqs, 0)
        assert httpx.get(f"{mailer}/readyz", timeout=5).json()["consumer"]["state"] \
            == "running"

        _an_operator_pauses_and_resumes_the_mailer_with_the_cli(stack, mailer)
    finally:
        stack.stop()
        if controller is not None:
            controller.stop()


def _an_operator_pauses_and_resumes_the_mailer_with_the_cli(stack, mailer: str) -> None:
    def ctl(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "ADMIN_TOKEN"}
        if token is not None:
            env["ADMIN_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "messaging.operations.consumerctl", *args,
                               "mailer", "--url", mailer], capture_output=True, text=True,
                              timeout=30, env=env)

    no_token = ctl("pause", "--reason", "SMTP maintenance", token=None)
    assert no_token.returncode == 2 and "ADMIN_TOKEN is not set" in no_token.stderr, no_token
    refused = ctl("pause", "--reason", "SMTP maintenance", token="not-the-token-at-all")
    assert refused.returncode == 1 and "refused" in refused.stderr, refused
    assert ctl("status", token=None).stdout.strip() == "mailer consumer: running"
    invalid = ctl("pause", "--reason", "two\nlines")  # would forge a second log line
    assert invalid.returncode == 2 and "invalid" in invalid.stderr, invalid
    paused = ctl("pause", "--reason", "SMTP maintenance")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == \
        "mailer consumer: paused (by the operator): SMTP maintenance"
    body = httpx.get(f"{mailer}/readyz", timeout=5)
    assert body.status_code == 200
    assert body.json()["consumer"] == {"state": "paused", "by": "operator",
                                       "reason": "SMTP maintenance", "until": None}

    waiting = pay(stack.url("payment"))
    eventually(lambda: handled_elsewhere(stack, waiting["order_id"]), timeout=10)
    assert get(mailer, "/mails", order_id=waiting["order_id"]) == []  # held while paused

    resumed = ctl("resume")
    assert resumed.returncode == 0 and "running" in resumed.stdout, resumed
    eventually(lambda: len(get(mailer, "/mails", order_id=waiting["order_id"])) == 2,
               timeout=15, message="the held mails after the resume")
    log = stack.log_tail("mailer", lines=400)
    assert "operator action: mailer consumer paused from 127.0.0.1: SMTP maintenance" in log
    assert "operator action refused: mailer /consumer/pause from 127.0.0.1" in log
