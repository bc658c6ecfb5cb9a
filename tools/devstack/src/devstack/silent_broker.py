"""A broker that never answers: a TCP listener that accepts connections and stays silent, so
a client hangs in the AMQP handshake (start-up against a slow or frozen broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def silent_broker() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """Yields an AMQP URL and the list of connections accepted so far."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/", accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
