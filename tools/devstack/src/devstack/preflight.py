"""What `make test` needs from the machine, checked (and where it can be, prepared) before the
first test runs, so no test fails with a connection error because a prerequisite was missing.

    python -m devstack.preflight

- RabbitMQ reachable over AMQP: the machine's job; one line and exit 1 if not.
- The RabbitMQ management API (tests make throwaway vhosts through it): if it does not answer
  and the broker is local with `rabbitmq-plugins` on the machine, the plugin is enabled (said in
  one line); otherwise one line with the exact command to run, and exit 1.
- PostgreSQL reachable with the `test` database: one line and exit 1 if not.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

from devstack import throwaway

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
MANAGEMENT_START_SECONDS = 60
ENABLE_MANAGEMENT = "rabbitmq-plugins enable rabbitmq_management"


class PreflightError(Exception):
    """A prerequisite is missing; the message is the one line to print."""


def _amqp_address() -> tuple[str, int]:
    host, _, port = throwaway.AMQP_HOST.rpartition(":")
    return host or throwaway.AMQP_HOST, int(port or 5672)


def check_broker() -> None:
    host, port = _amqp_address()
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise PreflightError(
            f"RabbitMQ does not answer on {host}:{port} ({error.strerror or error}); "
            "start it (on this kind of machine: rabbitmq-server -detached)"
        ) from None


def management_answers() -> bool:
    try:
        with throwaway.management() as api:
            return api.get("/api/overview").status_code == 200
    except httpx.HTTPError:
        return False


def broker_is_local() -> bool:
    management_host = urlsplit(throwaway.MANAGEMENT_URL).hostname or ""
    return _amqp_address()[0] in LOCAL_HOSTS and management_host in LOCAL_HOSTS


def ensure_management(say=print) -> None:
    if management_answers():
        return
    if not (broker_is_local() and shutil.which("rabbitmq-plugins")):
        raise PreflightError(
            f"the RabbitMQ management API does not answer at {throwaway.MANAGEMENT_URL}; "
            f"enable it on the broker: {ENABLE_MANAGEMENT}"
        )
    say("preflight: enabling the RabbitMQ management plugin (tests make throwaway vhosts "
        f"through its API): {ENABLE_MANAGEMENT}")
    result = subprocess.run(ENABLE_MANAGEMENT.split(), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PreflightError(f"{ENABLE_MANAGEMENT} failed: {last[0]}")
    deadline = time.monotonic() + MANAGEMENT_START_SECONDS
    while not management_answers():
        if time.monotonic() > deadline:
            raise PreflightError(
                f"the management plugin is enabled but {throwaway.MANAGEMENT_URL} did not answer "
                f"within {MANAGEMENT_START_SECONDS} s"
            )
        time.sleep(0.5)


async def _postgres_answers() -> None:
    import asyncpg

    conn = await asyncpg.connect(throwaway.POSTGRES_ADMIN_URL, timeout=5)
    await conn.close()


def check_postgres() -> None:
    try:
        asyncio.run(_postgres_answers())
    except Exception as error:  # refused, timed out, no such database: asyncpg's errors vary
        raise PreflightError(
            f"PostgreSQL is not reachable at {throwaway.POSTGRES_ADMIN_URL} "
            f"({type(error).__name__}: {error}); the tests need it running with a `test` "
            "database (on this kind of machine: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
        ) from None


def main() -> int:
    try:
        check_broker()
        ensure_management()
        check_postgres()
    except PreflightError as error:
        print(f"make test: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
