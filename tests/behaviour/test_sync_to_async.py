"""Moving from the synchronous to the asynchronous mode on the same databases.

Both modes use the same tables: payment's outbox (written in sync mode too, never relayed
there) and each consumer's inbox. Started on the databases the sync mode left behind, the
asynchronous stack publishes every outbox row; the inboxes skip what the sync mode already
applied and apply what failed there, so the mail a slow-failing SMTP server cost in sync
mode is delivered, and nothing is done twice.
"""

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack import smtp_sink
from devstack.smtp_sink import mails_in
from devstack.stack import SERVICES, Stack, free_port
from devstack.syncmode import SyncShop
from devstack.wait import eventually

pytestmark = pytest.mark.e2e

FAILED = "X-Handler-Failures"


def duplicates_skipped(url: str, service: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "messages_duplicates_total"
               and sample.labels.get("service") == service)


def smtp_mails(tmp_path) -> list:
    return mails_in(tmp_path / "mail")  # where the `smtp` fixture's sink saves them


def test_the_async_stack_delivers_what_failed_in_sync_mode_and_repeats_nothing(
    tmp_path, amqp_url, smtp
):
    databases = {s: f"sqlite+aiosqlite:///{tmp_path}/{s}.db" for s in SERVICES}
    sync = SyncShop(
        database_urls=databases,
        smtp_port=smtp.port, ports={s: free_port() for s in SERVICES},
        log_path=tmp_path / "inprocess.log",
    )
    sync.start()
    try:
        sync.wait_ready(timeout=40)
        body = {"customer_id": "movers", "amount": 1000, "currency": "JPY"}
        ok = httpx.post(f"{sync.url('payment')}/payments", timeout=10,
                        json=body | {"order_id": "00000000-0000-4000-8000-000000000001",
                                     "email": "ok@example.com"})
        smtp.fail_until = time.monotonic() + 3600
        lost = httpx.post(f"{sync.url('payment')}/payments", timeout=10,
                          json=body | {"order_id": "00000000-0000-4000-8000-000000000002",
                                       "email": "lost@example.com"})
        smtp.fail_until = 0.0
    finally:
        sync.stop()
    assert FAILED not in ok.headers and lost.headers[FAILED] == "mailer"
    # ok: thank-you and shipped; lost: neither (its shipped mail waits for its thank-you).
    assert [m["To"] for m in smtp_mails(tmp_path)] == ["ok@example.com"] * 2

    stack = Stack(rabbitmq_url=amqp_url, database_urls=databases, smtp_port=smtp.port,
                  ports={s: free_port() for s in SERVICES}, log_dir=tmp_path)
    # Consumers first: their queues must exist before the relay publishes the backlog (in a
    # deployment the broker definitions declare them; this vhost is brand new).
    # Shipping is a relay too: it starts after the queues of what it publishes exist, and
    # publishes its two unrelayed OrderShipped rows before payment's OrderPaid rows go out:
    # the mailer holds the lost order's shipped mail back until its thank-you mail is out.
    stack.start("points", "mailer", "audit")
    try:
        stack.wait_ready("points", "mailer", "audit", timeout=40)
        stack.start("shipping")
        stack.wait_ready("shipping", timeout=40)
        stack.start("payment")
        eventually(lambda: [m["To"] for m in smtp_mails(tmp_path)].count("lost@example.com")
                   == 2, timeout=60, message="the two mails lost in sync mode")
        # Each consumer saw every event again and skipped what the sync mode had applied
        # (points ignores the two OrderShipped: no handler, not a duplicate).
        for service, skipped in (("points", 2), ("audit", 4), ("mailer", 2), ("shipping", 2)):
            eventually(lambda s=service, n=skipped: duplicates_skipped(stack.url(s), s) == n,
                       timeout=40, message=f"{service} skipping what was applied")
        assert sorted(m["To"] for m in smtp_mails(tmp_path)) == ["lost@example.com"] * 2 + [
            "ok@example.com"] * 2
        lost_mails = [m["Subject"] for m in smtp_sink.arrivals(tmp_path / "mail")
                      if m["To"] == "lost@example.com"]
        assert lost_mails == ["Thank you for your order", "Your order has shipped"]
        points = httpx.get(f"{stack.url('points')}/customers/movers/points", timeout=10).json()
        assert points["balance"] == 20
    finally:
        stack.stop()
