"""The least-privilege broker of deploy/rabbitmq/definitions.json, on the real local broker.

The definitions are applied (users, permissions, topology) to a throwaway vhost with uniquely
prefixed users, exactly as `deploy/rabbitmq/apply_definitions.py` applies them for the native
stack; then each service's user is tried against what it must and must not be able to do.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid

import aio_pika
import httpx
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelNotFoundEntity

from devstack import events
from messaging import outbox, outbox_store
from messaging.chassis import db
from messaging.outbox_store import add_to_outbox
from messaging.topology import QueueTopology

pytestmark = pytest.mark.integration

MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
MANAGEMENT_AUTH = (
    os.environ.get("RABBITMQ_MANAGEMENT_USER", "guest"),
    os.environ.get("RABBITMQ_MANAGEMENT_PASSWORD", "guest"),
)
AMQP_BASE = os.environ.get("RABBITMQ_AMQP_BASE", "amqp://127.0.0.1:5672")


class Broker(dict):
    """AMQP URLs of the definitions' users, by user name, and where the management API is."""

    management_url: str


@pytest.fixture(scope="module", params=["3.10", "4"])
def broker(request, apply_definitions):
    """AMQP URLs of the definitions' users in a fresh vhost; everything removed afterwards.

    On the local broker (3.10) and on a RabbitMQ 4 node booted from the same definitions
    (the `rabbit4` fixture), so least privilege is proven on both."""
    if request.param == "3.10":
        management_url, auth, amqp_base = MANAGEMENT_URL, MANAGEMENT_AUTH, AMQP_BASE
    else:
        rabbit4 = request.getfixturevalue("rabbit4")
        management_url, auth, amqp_base = (
            rabbit4.management_url(), rabbit4.admin, rabbit4.amqp_base())
    run = secrets.token_hex(4)
    vhost, prefix = f"mini-ec-security-{run}", f"t{run}-"
    definitions = apply_definitions.load()
    users = apply_definitions.user_names(definitions)
    passwords = {user: secrets.token_urlsafe(16) for user in users}
    api = apply_definitions.ManagementAPI(management_url, *auth)
    try:
        apply_definitions.apply(api, definitions, passwords, vhost=vhost, user_prefix=prefix)
        urls = Broker(apply_definitions.amqp_urls(
            definitions, passwords, vhost=vhost, user_prefix=prefix, amqp_base=amqp_base
        ))
        urls.management_url = management_url
        yield urls
    finally:
        api.delete(vhost, [prefix + user for user in users])
        api.close()


def _message(body: bytes = b"{}") -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=uuid.uuid4().hex,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def _publish(url: str, exchange: str, routing_key: str, body: bytes = b"{}") -> None:
    """A confirmed, mandatory publish, the way the services publish."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        target = (
            channel.default_exchange
            if exchange == ""
            else await channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(_message(body), routing_key=routing_key, mandatory=True, timeout=10)


async def _get(url: str, queue: str, *, deadline: float = 10.0) -> aio_pika.IncomingMessage:
    """The next message of `queue`, polled with a deadline; acked."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        until = time.monotonic() + deadline
        while True:
            message = await q.get(fail=False)
            if message is not None:
                await message.ack()
                return message
            assert time.monotonic() < until, f"nothing arrived in {queue} within {deadline}s"
            await asyncio.sleep(0.1)


async def _consume_once(url: str, queue: str) -> None:
    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        await q.consume(ignore)


async def test_every_user_logs_in_with_its_password_and_no_other(broker):
    for url in broker.values():
        connection = await aio_pika.connect(url)
        await connection.close()
    wrong = broker["points"].replace("@", "x@", 1)
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(wrong)


async def test_payment_publishes_to_shop_events_and_every_consumer_queue_receives_it(broker):
    body = f'{{"probe": "{uuid.uuid4()}"}}'.encode()
    await _publish(broker["payment"], "shop.events", "order.paid", body)
    for service in ("points", "mailer", "audit", "shipping"):
        message = await _get(broker[service], f"{service}.events")
        assert message.body == body


async def test_shipping_relays_order_shipped_as_itself_and_its_consumers_receive_it(
    broker, tmp_path
):
    """The consumer that publishes: its outbox relay, logged in as `shipping` (no right to
    configure the exchange), publishes with confirms; mailer, audit and points receive it,
    shipping itself does not (its bindings are order.paid and order.refunded)."""
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/shipping.db")
    await db.create_schema(engine, outbox_store.metadata)
    sessions = db.session_factory(engine)
    shipped = events.order_shipped(events.order_paid())
    async with sessions() as session, session.begin():
        await add_to_outbox(session, shipped)
    connection = await aio_pika.connect_robust(broker["shipping"])
    try:
        relay = outbox.OutboxRelay(sessions, lambda: _same(connection), service="shipping")
        assert await relay.publish_pending() == 1
    finally:
        await connection.close()
        await engine.dispose()
    for service in ("points", "mailer", "audit"):
        assert (await _get(broker[service], f"{service}.events")).message_id == str(
            shipped.event_id)
    async with await aio_pika.connect(broker["admin"]) as admin:
        channel = await admin.channel()
        queue = await channel.get_queue("shipping.events", ensure=True)
        assert await queue.get(fail=False) is None


async def _same(
    connection: aio_pika.abc.AbstractRobustConnection,
) -> aio_pika.abc.AbstractRobustConnection:
    return connection


async def test_shipping_may_publish_to_shop_events_but_not_configure_it(broker):
    body = f'{{"probe": "{uuid.uuid4()}"}}'.encode()
    await _publish(broker["shipping"], "shop.events", "order.shipped", body)
    for service in ("points", "mailer", "audit"):  # taken out again: the queues stay empty
        assert (await _get(broker[service], f"{service}.events")).body == body
    async with await aio_pika.connect(broker["shipping"]) as connection:
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_exchange("shop.events", aio_pika.ExchangeType.TOPIC, durable=True)


async def test_payment_cannot_consume_or_declare(broker):
    with pytest.raises(ChannelAccessRefused):
        await _consume_once(broker["payment"], "points.events")
    async with await aio_pika.connect(broker["payment"]) as connection:
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue("", exclusive=True)  # a private queue to listen with


async def test_payment_cannot_publish_anywhere_else(broker):
    with pytest.raises(ChannelAccessRefused):
        await _publish(broker["payment"], "", "points.events")


@pytest.mark.parametrize("service", ["points", "mailer", "audit"])  # they produce nothing
async def test_a_consumer_cannot_publish_to_shop_events(broker, service):
    with pytest.raises(ChannelAccessRefused):
        await _publish(broker[service], "shop.events", "order.paid")


@pytest.mark.parametrize(
    ("service", "other"), [("points", "mailer"), ("mailer", "audit"), ("audit", "points"),
                           ("shipping", "mailer"), ("points", "shipping")]
)
async def test_a_consumer_cannot_read_another_services_queues(broker, service, other):
    with pytest.raises(ChannelAccessRefused):
        await _consume_once(broker[service], f"{other}.events")
    with pytest.raises(ChannelAccessRefused):
        await _consume_once(broker[service], f"{other}.events.dlq")


async def test_points_works_its_own_retry_and_dead_letter_path(broker):
    body = f'{{"probe": "{uuid.uuid4()}"}}'.encode()
    # To the 1 s wait queue, through its own exchange: after the TTL the broker dead-letters
    # it back to the work queue (through the same exchange).
    await _publish(broker["points"], "points.events.copies", "points.events.retry.1s", body)
    message = await _get(broker["points"], "points.events", deadline=15)
    assert message.body == body
    # To its DLQ, and read it back from there (the DLQ tool does this).
    await _publish(broker["points"], "points.events.copies", "points.events.dlq", body)
    assert (await _get(broker["points"], "points.events.dlq")).body == body


@pytest.mark.parametrize(
    ("service", "other"), [("points", "mailer"), ("mailer", "points"), ("audit", "mailer"),
                           ("shipping", "mailer"), ("points", "points")]
)
async def test_a_consumer_cannot_publish_through_the_default_exchange(broker, service, other):
    """Issue 27, finding 6: the default exchange routes to any queue by name, so a consumer
    allowed to write to it could put an event straight into another service's work queue (a
    compromised points into mailer.events: mail sent). No service user may."""
    with pytest.raises(ChannelAccessRefused):
        await _publish(broker[service], "", f"{other}.events")
    async with await aio_pika.connect(broker["admin"]) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{other}.events", ensure=True)
        assert await queue.get(fail=False) is None  # nothing arrived


@pytest.mark.parametrize(("service", "other"), [("points", "mailer"), ("mailer", "audit")])
async def test_a_consumer_cannot_publish_through_another_services_exchange(
    broker, service, other
):
    with pytest.raises(ChannelAccessRefused):
        await _publish(broker[service], f"{other}.events.copies", f"{other}.events")


async def test_a_consumer_redeclares_its_own_queues_but_not_the_exchange(broker):
    """What the service may declare at start: its queues (same arguments: no error) and the
    binding; the exchange only passively, an active declaration is configuration."""
    topology = QueueTopology.for_service("points")
    async with await aio_pika.connect(broker["points"]) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("shop.events", ensure=True)  # passive: allowed
        await channel.declare_queue(
            topology.dlq, durable=True, arguments=topology.dlq_arguments()
        )
        for delay in topology.retry_delays:
            await channel.declare_queue(
                topology.retry_queue(delay), durable=True, arguments=topology.retry_arguments(delay)
            )
        queue = await channel.declare_queue(
            topology.name, durable=True, arguments=topology.work_arguments()
        )
        await queue.bind(exchange, routing_key="order.*")

        with pytest.raises(ChannelAccessRefused):
            await channel.declare_exchange("shop.events", aio_pika.ExchangeType.TOPIC, durable=True)
    async with await aio_pika.connect(broker["points"]) as connection:
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue("mailer.events.sneaky", durable=True)


async def test_the_topology_is_in_place_before_any_service_starts(broker):
    """Definitions create the queues: an unknown one is a 404, not silently created."""
    async with await aio_pika.connect(broker["admin"]) as connection:
        channel = await connection.channel()
        for service in ("points", "mailer", "audit", "shipping"):
            await channel.get_queue(f"{service}.events", ensure=True)
        with pytest.raises(ChannelNotFoundEntity):
            await channel.get_queue("nobody.events", ensure=True)


def test_only_the_admin_user_reaches_the_management_api(broker):
    def login(service: str) -> int:
        url = httpx.URL(broker[service])
        response = httpx.get(
            f"{broker.management_url}/api/whoami",
            auth=(url.username, url.password),
            timeout=10,
        )
        return response.status_code

    assert login("admin") == 200
    for service in ("payment", "points", "mailer", "audit", "shipping"):
        assert login(service) == 401, service


async def test_rabbitmq_4_boots_from_the_rendered_definitions_with_no_guest(rabbit4):
    """deploy/rabbitmq/rabbitmq.conf + definitions rendered by apply_definitions.py, imported
    at boot by 4.0: the `shop` vhost, its users and queues exist, and `guest` does not."""
    with rabbit4.api() as api:
        users = {user["name"] for user in api.get("/api/users").json()}
        queues = {queue["name"]: queue for queue in api.get("/api/queues/shop").json()}
    assert {"admin", "payment", "points", "mailer", "audit"} <= users
    assert "guest" not in users
    for service in ("points", "mailer", "audit"):
        topology = QueueTopology.for_service(service)
        assert queues[topology.name]["arguments"] == topology.work_arguments()
        assert queues[topology.dlq]["arguments"] == topology.dlq_arguments()
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(f"amqp://guest:guest@{rabbit4.nodes[0].ip}:5672/")
    async with await aio_pika.connect(rabbit4.urls["points"]) as connection:
        channel = await connection.channel()
        await channel.get_queue("points.events", ensure=True)


async def test_the_console_reads_the_dlqs_and_replays_only_through_its_own_exchange(broker):
    """The failed-message console (docs/console.md): it takes dead letters, and writes only to
    console.replay, which the definitions bind to each work queue by the queue's name."""
    body = f'{{"probe": "{uuid.uuid4()}"}}'.encode()
    await _publish(broker["mailer"], "mailer.events.copies", "mailer.events.dlq", body)
    assert (await _get(broker["console"], "mailer.events.dlq")).body == body

    await _publish(broker["console"], "console.replay", "mailer.events", body)
    assert (await _get(broker["mailer"], "mailer.events")).body == body

    for exchange, key in (("", "mailer.events"), ("shop.events", "order.paid"),
                          ("mailer.events.copies", "mailer.events")):
        with pytest.raises(ChannelAccessRefused):
            await _publish(broker["console"], exchange, key)
    with pytest.raises(ChannelAccessRefused):
        await _consume_once(broker["console"], "mailer.events")
    async with await aio_pika.connect(broker["console"]) as connection:
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_exchange("console.replay", aio_pika.ExchangeType.DIRECT,
                                           durable=True)
