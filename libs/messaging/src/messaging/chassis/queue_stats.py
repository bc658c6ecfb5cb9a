"""Queue depths and consumer counts of one service's queues, as Prometheus gauges.

Read with a passive declare (which needs no configure right and creates nothing) just before
each scrape, so the backlog, the retry waits and the DLQ depth are on `/metrics` in every mode
(local processes, compose, tests) whether or not the broker's own Prometheus plugin is on.
"""

from __future__ import annotations

from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelNotFoundEntity

from messaging.broker import close_within
from messaging.observability import metrics
from messaging.topology import QueueTopology


async def refresh(connection: AbstractConnection, service: str, topology: QueueTopology) -> None:
    """Set `queue_messages` and `queue_consumers` for every queue of `topology`.

    A queue that does not exist (yet) is skipped; the broker closes the channel on that 404,
    so the next queue gets a fresh one.
    """
    channel = None
    try:
        for role, name in topology.queues():
            if channel is None or channel.is_closed:
                channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                continue
            result = queue.declaration_result
            metrics.QUEUE_MESSAGES.labels(service, name, role).set(result.message_count or 0)
            metrics.QUEUE_CONSUMERS.labels(service, name, role).set(result.consumer_count or 0)
    finally:
        if channel is not None and not channel.is_closed:
            # Bounded: a scrape must not hang on a broker that stopped answering.
            await close_within(channel, "queue-stats channel")
