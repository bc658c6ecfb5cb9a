"""The console in a real browser (make test-browser; marked `browser`, so `make test` leaves it
out): a poison message and refused mails parked in a throwaway vhost, the groups page opened,
a screenshot taken (into docs/), "replay group" clicked, the mails arriving once and the group
marked replayed; no page without a login; a form post without its CSRF token refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import aio_pika
import httpx
import pytest

from devstack import smtp_sink, throwaway
from devstack.console import ConsoleProcess
from devstack.smtp_sink import mails_in
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually
from messaging.publisher import open_confirm_channel, publish_confirmed
from messaging.topology import EXCHANGE

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs"
ORDERS = 4


@pytest.fixture(scope="module")
def parked(tmp_path_factory):
    """The services and the console in a throwaway vhost; a poison message and ORDERS
    refused thank-you mails parked. Yields (console, smtp, mail dir, the mails' group)."""
    for need in ("/usr/bin/chromium", HERE / "node_modules" / "playwright-core"):
        if not Path(need).exists():
            pytest.fail(f"{need} is missing: run `make test-browser`, which installs it")
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    controller, smtp = smtp_sink.start(tmp / "mail", port=port)
    smtp.fail_until = time.monotonic() + 3600
    with throwaway.throwaway_vhost("browser") as (_vhost, url):
        stack = Stack(rabbitmq_url=url, smtp_port=port, log_dir=tmp,
                      database_urls={s: f"sqlite+aiosqlite:///{tmp}/{s}.db" for s in SERVICES},
                      ports={s: free_port() for s in SERVICES},
                      extra_env={"RETRY_DELAYS": "1", "MAX_DEFERRALS": "2"})
        console = ConsoleProcess(rabbitmq_url=url, port=free_port(), log_path=tmp / "console.log",
                                 database_url=f"sqlite+aiosqlite:///{tmp}/console.db")
        try:
            stack.start()
            console.start()
            stack.wait_ready(timeout=180)
            console.wait_ready(timeout=180)
            for _ in range(ORDERS):
                httpx.post(f"{stack.url('payment')}/payments", timeout=10, json={
                    "order_id": str(uuid.uuid4()), "customer_id": "browser",
                    "email": "buyer@example.com", "amount": 1200, "currency": "JPY",
                }).raise_for_status()
            asyncio.run(_publish_poison(url))

            def refused_group():
                found = httpx.get(f"{console.url}/api/groups", auth=console.auth,
                                  timeout=10).json()
                poison = [g for g in found if g["error_class"] == "poison"]
                return next((g["id"] for g in found if g["error_class"] == "exhausted"
                             and g["count"] == ORDERS), None) if poison else None

            group = eventually(refused_group, timeout=60, message="refused mails parked")
            yield console, smtp, tmp / "mail", group
        finally:
            console.stop()
            stack.stop()
            controller.stop()


async def _publish_poison(url: str) -> None:
    connection = await aio_pika.connect(url)
    channel = await open_confirm_channel(connection)
    exchange = await channel.get_exchange(EXCHANGE)
    await publish_confirmed(exchange, aio_pika.Message(b"{not json"), routing_key="order.paid")
    await connection.close()


def test_replaying_the_refused_mails_from_the_groups_page_sends_each_once(parked, tmp_path):
    console, smtp, mail_dir, group = parked
    assert mails_in(mail_dir) == []
    smtp.fail_until = 0.0  # the mail server accepts again

    done = subprocess.run(
        ["node", str(HERE / "console.mjs")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "CONSOLE_URL": console.url, "CONSOLE_USER": console.user,
             "CONSOLE_PASSWORD": console.password, "GROUP_ID": group,
             "SCREENSHOT_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    assert seen["without_login"] and set(seen["without_login"]) == {401}
    assert seen["wrong_password"] and set(seen["wrong_password"]) == {401}
    assert seen["logged_in"] == 200
    assert (seen["status_before"], seen["status_after"]) == ("parked", "replayed")
    assert seen["post_without_csrf"] == 403
    assert console.user in seen["audit"] and "replay-group" in seen["audit"]
    # Each refused thank-you mail arrived, once.
    sent = eventually(lambda: m if len(m := mails_in(mail_dir)) >= ORDERS else None,
                      timeout=30, message="the replayed mails")
    thanks = Counter(m["Message-ID"] for m in sent if "Thank you" in m["subject"])
    assert len(thanks) == ORDERS and set(thanks.values()) == {1}, thanks
    # The screenshots go into the docs.
    for name in ("console-groups.png", "console-groups-replayed.png"):
        shutil.copy(tmp_path / name, DOCS / name)
