"""The connection to RabbitMQ: robust (reconnects by itself), retried until it comes up."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection

log = logging.getLogger(__name__)


async def connect(url: str, name: str, *, max_backoff: float = 10.0) -> AbstractRobustConnection:
    """Connect, retrying with backoff while the broker is unreachable (until cancelled)."""
    backoff = 0.5
    while True:
        try:
            return await aio_pika.connect_robust(
                url, client_properties={"connection_name": name}, reconnect_interval=1
            )
        except aio_pika.exceptions.ProbableAuthenticationError as exc:
            # Wrong user, password or vhost: a setting to fix, said loudly. Still retried:
            # the user or vhost may be created a moment later (definitions loaded late).
            log.error("broker refused the login of RABBITMQ_URL (%s); retrying in %.1fs",
                      exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        except (ConnectionError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            log.warning("broker not reachable (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
