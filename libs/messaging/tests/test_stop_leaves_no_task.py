"""A stop while the broker has not yet answered (start-up, a slow or frozen broker) leaves no
task behind: a task that outlives its service's stop would hang the event loop's shutdown."""

import asyncio

import aiormq
import pytest

from devstack.silent_broker import silent_broker
from devstack.wait import eventually, only_this_task_left
from messaging import inbox
from messaging.chassis import db
from messaging.chassis.runtime import BrokerLink, ConsumerRuntime
from messaging.chassis.settings import ConsumerSettings

pytestmark = pytest.mark.integration


async def test_a_link_closed_mid_handshake_leaves_no_task_behind():
    async with silent_broker() as (url, accepted):
        link = BrokerLink(url, "mid-handshake")
        link.start()
        await asyncio.to_thread(eventually, lambda: accepted, message="connection accepted")
        await link.close()
        await only_this_task_left()


async def test_a_link_closed_while_its_open_connection_gets_ready_closes_that_connection(
    amqp_url, monkeypatch
):
    # The connection's last step (aio-pika waits for aiormq's `ready`) held, so the stop
    # lands there; cancelled there, aio-pika would lose the open connection, its reader,
    # writer and heartbeat running on. The link lets the attempt finish, then closes it.
    getting_ready, go = asyncio.Event(), asyncio.Event()
    ready = aiormq.Connection.ready

    async def held_ready(connection):
        getting_ready.set()
        await go.wait()
        await ready(connection)

    monkeypatch.setattr(aiormq.Connection, "ready", held_ready)
    link = BrokerLink(amqp_url, "closed-while-getting-ready")
    link.start()
    await asyncio.wait_for(getting_ready.wait(), timeout=30)
    closing = asyncio.create_task(link.close())
    await asyncio.sleep(0)  # the close has begun (a loop turn, not a wait for an outcome)
    go.set()
    await closing
    await only_this_task_left()


async def test_a_consumer_runtime_stopped_during_start_up_leaves_no_task_behind(tmp_path):
    async with silent_broker() as (url, accepted):
        settings = ConsumerSettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inbox.db",
                                    rabbitmq_url=url)
        engine = db.create_engine(settings.database_url)
        await db.create_schema(engine, inbox.metadata)

        async def nothing(event, session):
            return None

        box = inbox.Inbox(db.session_factory(engine))
        runtime = ConsumerRuntime("stopped-early", settings, box, nothing)
        await runtime.start()
        await asyncio.to_thread(eventually, lambda: accepted, message="connection accepted")
        await runtime.stop()
        await engine.dispose()
        await only_this_task_left()
