"""The connection to RabbitMQ: robust (reconnects by itself), retried until it comes up;
and closing channels and connections at a stop without waiting on a broker that does not answer."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from aio_pika.connection import make_url

log = logging.getLogger(__name__)

# How long a stop waits for the broker to answer one step (basic.cancel, a channel's close,
# a connection's close). A healthy broker answers in milliseconds; one whose quorum queues
# lost their majority, or behind a frozen network, may never answer.
STOP_STEP_SECONDS = 2.0


async def connect(url: str, name: str, *, max_backoff: float = 10.0) -> AbstractRobustConnection:
    """Connect, retrying with backoff while the broker is unreachable (until cancelled)."""
    backoff = 0.5
    while True:
        try:
            return await _connect_once(url, name)
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


async def _connect_once(url: str, name: str) -> AbstractRobustConnection:
    """One robust connection, closed again if its first connect fails or is cancelled.

    Not `aio_pika.connect_robust`: it starts the connection's own reconnecting task and,
    when the caller is cancelled mid-handshake (a stop during start-up), leaves that task
    running unowned; it swallows later cancellations while it connects, so the task
    outlives the service's stop and hangs the event loop's shutdown (docs/failure.md).
    """
    connection = aio_pika.RobustConnection(
        make_url(url),
        client_properties={"connection_name": name}, reconnect_interval=1,
    )
    try:
        await connection.connect()
    except BaseException:
        await close_within(connection, f"{name} connection (not yet up)")
        raise
    return connection


async def close_within(closable: AbstractChannel | AbstractConnection, what: str,
                       seconds: float = STOP_STEP_SECONDS) -> None:
    """Close a channel or connection, waiting at most `seconds` for the broker's answer.

    Never raises: this runs on the way out. If the broker does not answer, the socket goes
    with the process, and the broker requeues whatever was unacked on it.
    """
    try:
        async with asyncio.timeout(seconds):
            await closable.close()
    except TimeoutError:
        log.warning("%s: the broker did not answer the close within %.0fs; left behind",
                    what, seconds)
    except Exception:
        log.debug("%s: close failed", what, exc_info=True)
