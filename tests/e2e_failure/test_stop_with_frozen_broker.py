"""A SIGTERM ends a consumer service within its own bound whatever the broker does.

The consumer reaches the real broker through a BrokerGate; freezing the gate makes the broker
stop answering without closing anything, as a broker whose quorum queues lost their majority
does (`basic.cancel` unanswered for 15 s and more) or a network that drops every packet.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import quote

import aio_pika
import httpx
import pytest

from devstack import events, throwaway
from devstack.stack import SERVICES, Stack, free_port
from devstack.wait import eventually
from messaging.broker import STOP_STEP_SECONDS, close_within
from messaging.consumer import EventConsumer
from messaging.publisher import build_message, open_confirm_channel, publish_confirmed
from messaging.topology import QueueTopology, declare_exchange

pytestmark = pytest.mark.e2e

# No HTTP request and no message in flight at the stop: cancel, channel closes (concurrent)
# and connection closes (concurrent) are one bounded step each; the rest is process exit.
STOP_BOUND = 3 * STOP_STEP_SECONDS + 5.0


@pytest.mark.parametrize("frozen", [("to_broker",), ("to_broker", "to_client")],
                         ids=["broker-gets-nothing-acks-lost", "both-ways-delivery-stuck"])
def test_sigterm_ends_a_consumer_whose_broker_stopped_answering_with_exit_0_in_time_and_the_unacked_message_is_applied_once_after_restart(  # noqa: E501
    vhost, broker_gate, tmp_path, frozen
):
    name, url = vhost
    audit = _audit_through(broker_gate, name, tmp_path)
    broker_gate.open()
    audit.start("audit")
    try:
        audit.wait_ready("audit", timeout=60)
        broker_gate.freeze(*frozen)
        paid = events.order_paid(customer_id=f"frozen-{uuid.uuid4().hex[:8]}")
        asyncio.run(_publish(url, paid))  # straight to the broker, not through the gate
        if frozen == ("to_broker",):
            # Delivered and applied; the ack (like every later request) never reaches the broker.
            eventually(lambda: _audited(audit, paid), timeout=30, message="applied")
        else:
            # Sent to the consumer's connection, stuck in the gate: unacked on the broker.
            eventually(lambda: _queue(name).get("messages_unacknowledged") == 1, timeout=30,
                       message="delivered to the frozen connection")

        started = time.monotonic()
        audit.signal("audit")
        assert audit.wait_exit("audit", timeout=60) == 0, audit.log_tail("audit")
        took = time.monotonic() - started
        assert took < STOP_BOUND, f"stop took {took:.1f}s"
        assert "did not answer the cancel" in audit.log_tail("audit", lines=80)

        broker_gate.sever()  # the old connection goes: the broker requeues the message
        audit.start("audit")
        audit.wait_ready("audit", timeout=60)
        # Redelivered to the new process: a duplicate if it was applied before the stop.
        outcome = "duplicate" if frozen == ("to_broker",) else "applied"
        eventually(lambda: _acked(audit, outcome) == 1, timeout=30,
                   message=f"the redelivery acked as {outcome}")
        assert [r["event_id"] for r in _audited(audit, paid)] == [str(paid.event_id)]
    finally:
        audit.stop()
    print(f"stopped in {took:.1f}s (bound {STOP_BOUND:.0f}s) with {' and '.join(frozen)} frozen")


def _audit_through(gate, vhost_name: str, tmp_path) -> Stack:
    """Only audit runs: through the gate, SQLite, a fixed port across its restart."""
    return Stack(
        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{gate.port}/{quote(vhost_name, safe='')}",
        database_urls={s: f"sqlite+aiosqlite:///{tmp_path}/{s}.db" for s in SERVICES},
        smtp_port=free_port(),  # unused
        ports={s: free_port() for s in SERVICES},
        log_dir=tmp_path,
        extra_env={"LOG_LEVEL": "INFO"},
    )


def _audited(stack: Stack, paid) -> list:
    response = httpx.get(f"{stack.url('audit')}/events", params={"order_id": str(paid.order_id)},
                         timeout=5)
    response.raise_for_status()
    return response.json()


def _acked(stack: Stack, outcome: str) -> float:
    """messages_acked_total{outcome=...} on audit's /metrics (this process's count)."""
    text = httpx.get(f"{stack.url('audit')}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("messages_acked_total{") and f'outcome="{outcome}"' in line)


def _queue(vhost_name: str) -> dict:
    """audit.events as the management API last sampled it (lags: always polled)."""
    with throwaway.management() as api:
        response = api.get(f"/api/queues/{quote(vhost_name, safe='')}/audit.events")
        response.raise_for_status()
        return response.json()


async def _publish(url: str, event) -> None:
    async with await aio_pika.connect(url) as connection:
        exchange = await declare_exchange(await open_confirm_channel(connection))
        message = build_message(event.to_json(), message_id=str(event.event_id),
                                correlation_id=event.correlation_id,
                                event_type=event.event_type, timestamp=event.occurred_at)
        await publish_confirmed(exchange, message, routing_key=event.routing_key)


async def test_a_consumer_cancelled_while_starting_against_a_broker_that_stopped_answering_gives_up_in_time(  # noqa: E501
    vhost, broker_gate
):
    name, _ = vhost
    broker_gate.open()
    connection = await aio_pika.connect_robust(
        f"amqp://guest:guest@127.0.0.1:{broker_gate.port}/{quote(name, safe='')}")
    await declare_exchange(await connection.channel())  # as deployed: the exchange exists
    consuming_channel_open = asyncio.Event()

    class FreezesAfterTheConsumingChannel:
        """The consumer's connection; the broker stops answering once the consumer's own
        channel is open, so its set-up (basic.qos, the declarations) never completes."""

        opened = 0

        async def channel(self, *args, **kwargs):
            channel = await connection.channel(*args, **kwargs)
            self.opened += 1
            if self.opened == 2:  # 1: the exchange check, 2: the consuming channel
                broker_gate.freeze("to_broker")
                consuming_channel_open.set()
            return channel

    async def never_called(event):
        raise AssertionError(event)

    consumer = EventConsumer(
        service="audit", topology=QueueTopology.for_service("audit"),
        connection=FreezesAfterTheConsumingChannel(), publish_connection=connection,
        process=never_called,
    )
    starting = asyncio.create_task(consumer.start())
    try:
        await asyncio.wait_for(consuming_channel_open.wait(), timeout=30)
        assert not starting.done()
        started = time.monotonic()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(starting, timeout=STOP_STEP_SECONDS + 5)
        took = time.monotonic() - started
        assert took < STOP_STEP_SECONDS + 2, f"gave up after {took:.1f}s"
    finally:
        broker_gate.sever()
        await close_within(connection, "test connection")
