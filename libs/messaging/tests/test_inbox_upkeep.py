"""A running consumer keeps its inbox bounded: records older than INBOX_RETENTION_HOURS go."""

from datetime import timedelta

import pytest
from sqlalchemy import insert

from contracts import utcnow
from devstack import events
from devstack.wait import eventually_async
from messaging import inbox
from messaging.chassis import db
from messaging.chassis.runtime import ConsumerRuntime
from messaging.chassis.settings import ConsumerSettings
from messaging.inbox import Inbox, inbox_table
from messaging.spec import every

pytestmark = pytest.mark.integration


async def test_the_runtime_forgets_inbox_records_older_than_the_retention(
    database_url, amqp_url
):
    engine = db.create_engine(database_url)
    await db.create_schema(engine, inbox.metadata)
    sessions = db.session_factory(engine)
    old, recent = events.order_paid(), events.order_paid()
    async with sessions() as session, session.begin():
        for event, age in ((old, timedelta(hours=3)), (recent, timedelta(minutes=5))):
            await session.execute(insert(inbox_table).values(
                event_id=str(event.event_id), event_type=event.event_type,
                order_id=str(event.order_id), sequence=1, processed_at=utcnow() - age))
    box = Inbox(sessions)
    settings = ConsumerSettings(database_url=database_url, rabbitmq_url=amqp_url,
                                inbox_retention_hours=1)

    async def nothing(event, session):
        return None

    runtime = ConsumerRuntime("points", settings, box, every(nothing))
    await runtime.start()
    try:
        await eventually_async(lambda: _forgotten(box, old), timeout=20,
                               message="old record trimmed")
        assert await box.seen(str(recent.event_id))
    finally:
        await runtime.stop()
        await engine.dispose()


async def _forgotten(box: Inbox, event) -> bool:
    return not await box.seen(str(event.event_id))
