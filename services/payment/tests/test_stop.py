"""payment's lifespan ends with nothing of it still running, even when it ends while the
broker has not yet answered: a task left behind would hang the process's shutdown."""

import asyncio
import uuid

import httpx
import pytest

from devstack.silent_broker import silent_broker
from devstack.wait import eventually, only_this_task_left
from messaging.chassis.app import service_app
from payment.settings import Settings
from payment.spec import SPEC

pytestmark = pytest.mark.integration


async def test_a_stop_while_the_broker_has_not_answered_leaves_no_task_behind(tmp_path):
    async with silent_broker() as (url, accepted):
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/payment.db",
                            rabbitmq_url=url)
        app = service_app(SPEC, settings)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://payment"
        ) as client:
            response = await client.post("/payments", json={
                "order_id": str(uuid.uuid4()), "customer_id": "alice",
                "email": "alice@example.com", "amount": 1200, "currency": "JPY"})
            assert response.status_code == 201  # taken while the broker is away
            await asyncio.to_thread(eventually, lambda: accepted, message="connection accepted")
        await only_this_task_left()
