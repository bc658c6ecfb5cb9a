"""A service's broker link: readiness follows the real connection state, and a refused login
is retried (said loudly) until it works."""

import asyncio
import uuid
from urllib.parse import quote

import pytest

from devstack import throwaway
from devstack.wait import eventually_async
from messaging.chassis.runtime import BrokerLink

pytestmark = pytest.mark.integration


async def is_ready(link: BrokerLink) -> bool:
    try:
        await link.check()
        return True
    except ConnectionError:
        return False


async def test_readiness_fails_while_the_broker_is_unreachable_and_recovers(vhost):
    # Deleting the vhost closes our connection from the broker's side and makes every
    # reconnect fail until it exists again: an outage as the service sees it.
    name, url = vhost
    link = BrokerLink(url, "readiness")
    link.start()
    try:
        await eventually_async(lambda: is_ready(link), message="connected")
        await asyncio.to_thread(throwaway.delete_vhost, name)
        await eventually_async(lambda: _not(is_ready(link)), timeout=10, message="not ready")
        await asyncio.to_thread(throwaway.create_vhost, name)
        await eventually_async(lambda: is_ready(link), timeout=30, message="reconnected")
    finally:
        await link.close()


async def test_a_refused_login_is_retried_until_the_user_exists(vhost, caplog):
    name, _url = vhost
    user, password = f"late-{uuid.uuid4().hex[:8]}", "secret"
    url = f"amqp://{user}:{password}@{throwaway.AMQP_HOST}/{quote(name, safe='')}"
    link = BrokerLink(url, "late-user")
    link.start()
    try:
        await eventually_async(lambda: _logged(caplog, "broker refused the login"), timeout=10,
                               message="refusal logged")
        assert not await is_ready(link)
        with throwaway.management() as api:
            api.put(f"/api/users/{user}", json={"password": password, "tags": ""})
            api.put(f"/api/permissions/{quote(name, safe='')}/{user}",
                    json={"configure": ".*", "write": ".*", "read": ".*"})
        await eventually_async(lambda: is_ready(link), timeout=30, message="logged in at last")
    finally:
        await link.close()
        with throwaway.management() as api:
            api.delete(f"/api/users/{user}")


async def _not(awaitable) -> bool:
    return not await awaitable


async def _logged(caplog, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)
