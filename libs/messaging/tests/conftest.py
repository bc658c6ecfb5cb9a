"""Fixtures the library's broker tests share: a connection to the test broker, and a queue
that taps every event published to the exchange."""

from __future__ import annotations

import aio_pika
import pytest

from messaging.topology import EXCHANGE


@pytest.fixture
async def connection(amqp_url):
    conn = await aio_pika.connect_robust(amqp_url)
    yield conn
    await conn.close()


@pytest.fixture
async def tap(connection):
    """A queue that receives every event published to shop.events."""
    channel = await connection.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "#")
    return queue
