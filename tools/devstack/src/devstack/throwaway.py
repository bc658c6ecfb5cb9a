"""Throwaway broker vhosts and PostgreSQL databases, so each test run or benchmark starts clean.

Uses the RabbitMQ management API (enable it with `rabbitmq-plugins enable rabbitmq_management`)
and the local PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import quote

import httpx

MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
MANAGEMENT_AUTH = ("guest", "guest")
AMQP_HOST = os.environ.get("RABBITMQ_HOST", "127.0.0.1:5672")
POSTGRES_ADMIN_URL = os.environ.get("POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def management() -> httpx.Client:
    return httpx.Client(base_url=MANAGEMENT_URL, auth=MANAGEMENT_AUTH, timeout=10)


def create_vhost(name: str, user: str = "guest") -> str:
    """Create `name`, give `user` full rights on it, and return its AMQP URL."""
    with management() as api:
        api.put(f"/api/vhosts/{quote(name, safe='')}").raise_for_status()
        api.put(
            f"/api/permissions/{quote(name, safe='')}/{user}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    return f"amqp://guest:guest@{AMQP_HOST}/{quote(name, safe='')}"


def delete_vhost(name: str) -> None:
    with management() as api:
        api.delete(f"/api/vhosts/{quote(name, safe='')}")


def queue_depth(vhost: str, queue: str) -> int:
    """Messages in `queue` (ready + unacked), as the management API last sampled them."""
    with management() as api:
        response = api.get(f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
        response.raise_for_status()
        return int(response.json().get("messages", 0))


@contextmanager
def throwaway_vhost(prefix: str = "test"):
    """Yields (vhost name, AMQP URL); the vhost and everything in it is deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    url = create_vhost(name)
    try:
        yield name, url
    finally:
        delete_vhost(name)


async def run_as_admin(statement: str) -> None:
    """One statement on the local PostgreSQL server as its admin (databases come and go)."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def throwaway_postgres(prefix: str = "t"):
    """Yields a `postgresql+asyncpg://` URL of a new, empty database; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await run_as_admin(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        await run_as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_postgres_database(prefix: str = "t") -> tuple[str, str]:
    """Synchronous variant for process-level fixtures: returns (name, URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(run_as_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


def drop_postgres_database(name: str) -> None:
    asyncio.run(run_as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
