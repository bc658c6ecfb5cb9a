"""The whole native stack under the broker security of deploy/rabbitmq/definitions.json.

The definitions (users, permissions, topology) are applied to a throwaway vhost with uniquely
prefixed users, exactly as `apply_definitions.py` does for a developer; then the five services
start as local processes, each connecting as its *own* user (no guest), and a payment flows
through points, mailer, audit and shipping (and shipping's OrderShipped back through mailer
and audit). The mail server refuses on purpose, so the mailer has to
work its retry queue and its dead-letter queue with nothing but its own permissions.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import uuid
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from aiosmtpd.controller import Controller

from devstack import smtp_sink
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually
from messaging.publisher import publish_confirmed

pytestmark = pytest.mark.e2e

MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
MANAGEMENT_AUTH = (
    os.environ.get("RABBITMQ_MANAGEMENT_USER", "guest"),
    os.environ.get("RABBITMQ_MANAGEMENT_PASSWORD", "guest"),
)
AMQP_BASE = os.environ.get("RABBITMQ_AMQP_BASE", "amqp://127.0.0.1:5672")
SLOW = 60.0  # a loaded 2-core machine: generous deadlines, never timed assertions


class RefusingSink(smtp_sink.SaveToDirectory):
    """The devstack sink, refusing the next `refusals` mails with a 451 (temporary) reply.

    A count rather than a clock (`fail_until`): the test decides exactly which delivery
    attempt fails, so the retry and the dead-letter path are deterministic.
    """

    refusals = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd API)
        if self.refusals > 0:
            self.refusals -= 1
            return "451 4.3.0 mail server temporarily unavailable (test fault)"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope="module")
def secured(tmp_path_factory, apply_definitions):
    """The stack, each service as its own user in a fresh vhost; users and vhost removed after."""
    tmp = tmp_path_factory.mktemp("least-privilege")
    run = secrets.token_hex(4)
    vhost, prefix = f"mini-ec-lp-{run}", f"lp{run}-"
    definitions = apply_definitions.load()
    users = apply_definitions.user_names(definitions)
    passwords = {user: secrets.token_urlsafe(16) for user in users}
    api = apply_definitions.ManagementAPI(MANAGEMENT_URL, *MANAGEMENT_AUTH)
    sink = RefusingSink(tmp / "mail")
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    stack = None
    try:
        apply_definitions.apply(api, definitions, passwords, vhost=vhost, user_prefix=prefix)
        urls = apply_definitions.amqp_urls(
            definitions, passwords, vhost=vhost, user_prefix=prefix, amqp_base=AMQP_BASE
        )
        stack = Stack(
            rabbitmq_url="amqp://nobody:wrong@127.0.0.1:1/",  # every service gets its own below
            rabbitmq_urls={service: urls[service] for service in SERVICES},
            database_urls={s: f"sqlite+aiosqlite:///{tmp}/{s}.db" for s in SERVICES},
            smtp_port=smtp_port,
            ports={s: free_port() for s in SERVICES},
            log_dir=tmp,
            # One wait queue (of the definitions' 1s/5s/30s): attempt, retry once, then DLQ.
            # A shipped mail waits (1 s at a time) for its thank-you mail: room for a replay.
            extra_env={"LOG_LEVEL": "INFO", "RETRY_DELAYS": "1", "MAX_DEFERRALS": "100"},
        )
        stack.start()
        stack.wait_ready(timeout=SLOW)
        stack.vhost, stack.prefix, stack.urls = vhost, prefix, urls
        stack.sink, stack.mail_dir = sink, tmp / "mail"
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        controller.stop()
        api.delete(vhost, [prefix + user for user in users])
        api.close()


def _pay(stack, customer_id: str) -> dict:
    response = httpx.post(
        f"{stack.url('payment')}/payments",
        json={"order_id": str(uuid.uuid4()), "customer_id": customer_id,
              "email": f"{customer_id}@example.com", "amount": 1200, "currency": "JPY"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()


def _get_json(url: str):
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


def _mails_for(stack, order_id: str) -> list:
    return _get_json(f"{stack.url('mailer')}/mails?order_id={order_id}")


def _mails(stack, order_id: str, count: int) -> list | None:
    """The order's mails once there are `count` of them (the thank-you and the shipped)."""
    mails = _mails_for(stack, order_id)
    return mails if len(mails) == count else None


def _metric(stack, service: str, name: str, **labels: str) -> float:
    """Sum of a counter's samples in the service's /metrics whose labels include `labels`."""
    text = httpx.get(f"{stack.url(service)}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:_total)?\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def _depth(stack, queue: str) -> int:
    """Messages in `queue`, exact (a passive declare as admin; the management API samples)."""
    async with await aio_pika.connect(stack.urls["admin"]) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count


def _queue_depth(stack, queue: str) -> int:
    return asyncio.run(_depth(stack, queue))


def test_each_service_is_connected_as_its_own_user(secured):
    def users_in_vhost() -> set[str]:
        response = httpx.get(
            f"{MANAGEMENT_URL}/api/vhosts/{quote(secured.vhost, safe='')}/connections",
            auth=MANAGEMENT_AUTH, timeout=10,
        )
        response.raise_for_status()
        users = {c["user"] for c in response.json()}
        return users if {secured.prefix + s for s in SERVICES} <= users else set()

    users = eventually(users_in_vhost, timeout=SLOW, message="a connection per service user")
    assert "guest" not in users


def test_a_payment_reaches_points_mail_audit_and_shipping_under_least_privilege(secured):
    customer = f"lp-{uuid.uuid4().hex[:8]}"
    payment = _pay(secured, customer)
    order_id = payment["order_id"]

    points = eventually(
        lambda: _get_json(f"{secured.url('points')}/customers/{customer}/points")["balance"],
        timeout=SLOW, message="points granted",
    )
    assert points == 12
    # Both mails: the second from the OrderShipped that shipping relayed as its own user.
    mails = eventually(lambda: _mails(secured, order_id, 2), timeout=SLOW, message="two mails")
    assert [(m["to"], m["subject"]) for m in mails] == [
        (f"{customer}@example.com", "Thank you for your order"),
        (f"{customer}@example.com", "Your order has shipped")]
    audit = eventually(
        lambda: a if len(a := _get_json(
            f"{secured.url('audit')}/events?order_id={order_id}")) == 2 else None,
        timeout=SLOW, message="audited",
    )
    assert sorted((e["event_type"], e["correlation_id"]) for e in audit) == [
        ("OrderPaid", payment["correlation_id"]), ("OrderShipped", payment["correlation_id"])
    ]
    [shipment] = _get_json(f"{secured.url('shipping')}/shipments?order_id={order_id}")
    assert shipment["status"] == "shipped"


def test_the_mailer_retries_through_its_own_wait_queue_as_its_own_user(secured):
    retried_before = _metric(secured, "mailer", "messages_retried", reason="transient")
    secured.sink.refusals = 1  # the first attempt fails, the retry gets through
    order_id = _pay(secured, f"lp-{uuid.uuid4().hex[:8]}")["order_id"]

    # The shipped mail waits for the thank-you one (out of order, not a transient failure).
    mails = eventually(lambda: _mails(secured, order_id, 2), timeout=SLOW, message="two mails")
    assert [m["subject"] for m in mails] == ["Thank you for your order", "Your order has shipped"]
    assert _metric(secured, "mailer", "messages_retried", reason="transient") == retried_before + 1
    assert _queue_depth(secured, "mailer.events.dlq") == 0


def _dlq_tool(stack, *args: str) -> subprocess.CompletedProcess:
    """`python -m messaging.operations.dlq` (what `make dlq` runs) with the mailer's own
    credentials."""
    return subprocess.run(
        [sys.executable, "-m", "messaging.operations.dlq", "--url", stack.urls["mailer"], *args],
        capture_output=True, text=True, timeout=60,
    )


def test_the_mailer_dead_letters_as_its_own_user_and_the_dlq_tool_replays_as_it(secured):
    secured.sink.refusals = 2  # the attempt and its one retry both fail: exhausted
    order_id = _pay(secured, f"lp-{uuid.uuid4().hex[:8]}")["order_id"]

    eventually(
        lambda: _metric(secured, "mailer", "messages_dead_lettered", error_class="exhausted"),
        timeout=SLOW, message="dead-lettered",
    )
    assert _mails_for(secured, order_id) == []

    shown = _dlq_tool(secured, "show", "mailer")
    assert shown.returncode == 0, shown.stderr
    assert "exhausted" in shown.stdout and order_id in shown.stdout

    replayed = _dlq_tool(secured, "replay", "mailer", "--all")
    assert replayed.returncode == 0, replayed.stderr
    # The shipped mail was waiting for the thank-you mail all along; it follows the replay.
    mails = eventually(lambda: _mails(secured, order_id, 2), timeout=SLOW, message="replayed")
    assert [m["subject"] for m in mails] == ["Thank you for your order", "Your order has shipped"]
    assert _queue_depth(secured, "mailer.events.dlq") == 0


async def test_the_dlq_tool_cannot_take_another_services_dead_letters_as_the_mailer(secured):
    # Something parked in points' DLQ (by points' own user): an empty DLQ is never read.
    async with await aio_pika.connect(secured.urls["points"]) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        parked = aio_pika.Message(b"{}", message_id=uuid.uuid4().hex,
                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        own = await channel.get_exchange("points.events.copies", ensure=False)
        await publish_confirmed(own, parked, routing_key="points.events.dlq")

    refused = await asyncio.to_thread(_dlq_tool, secured, "replay", "points", "--all")

    assert refused.returncode == 1
    assert "ACCESS_REFUSED" in refused.stderr
    assert await _depth(secured, "points.events.dlq") == 1  # nothing taken
