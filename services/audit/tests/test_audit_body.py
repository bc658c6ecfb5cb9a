"""The audit trail keeps each event's whole body (issue 26): the fields a newer producer
added included; a row from before bodies were kept has none; an unknown id is 404."""

import json
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Column, Integer, MetaData, String, Table, insert

from audit import api, handlers, store
from contracts import parse_event, utcnow
from devstack import events
from messaging.chassis import db
from messaging.chassis.db import UtcDateTime

pytestmark = pytest.mark.integration

OLD = str(uuid.uuid4())


@pytest.fixture
async def audit(database_url):
    """(sessions, client) of audit's store and read API on the test's database, with a
    table as the release before bodies made it (no `body` column), then its schema grown."""
    engine = db.create_engine(database_url)
    before = MetaData()  # audit_log as the release before bodies made it
    old_log = Table(
        "audit_log", before, Column("event_id", String(36), primary_key=True),
        Column("event_type", String(64), nullable=False),
        Column("order_id", String(36), nullable=False, index=True),
        Column("sequence", Integer, nullable=False),
        Column("occurred_at", UtcDateTime, nullable=False),
        Column("correlation_id", String(128), nullable=False),
        Column("trace_id", String(32), nullable=True),
        Column("received_at", UtcDateTime, nullable=False))
    async with engine.begin() as conn:
        await conn.run_sync(before.create_all)
        await conn.execute(insert(old_log).values(
            event_id=OLD, event_type="OrderPaid", order_id=str(uuid.uuid4()), sequence=1,
            occurred_at=utcnow(), correlation_id="c-old", received_at=utcnow()))
    await db.create_schema(engine, store.metadata)
    sessions = db.session_factory(engine)
    app = FastAPI()
    app.include_router(api.router(sessions))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://audit") as client:
        yield sessions, client
    await engine.dispose()


async def test_an_event_is_kept_whole_with_the_fields_its_reader_does_not_know(audit):
    sessions, client = audit
    body = json.loads(events.order_paid_v1().to_json())
    body["channel"] = "web"
    body["data"]["payment_method"] = "card"
    event = parse_event(json.dumps(body).encode())
    async with sessions() as session, session.begin():
        await handlers.record_event(event, session)

    kept = (await client.get(f"/events/{event.event_id}")).json()
    assert kept["event_type"] == "OrderPaid" and kept["correlation_id"] == event.correlation_id
    assert kept["body"]["channel"] == "web"
    assert kept["body"]["data"]["payment_method"] == "card"
    assert kept["body"]["version"] == 2  # as its handler read it
    assert kept["body"]["data"]["amount"] == {"value": 1200, "currency": "JPY"}
    # The list stays as it was: records without bodies.
    [listed] = (await client.get("/events", params={"order_id": str(event.order_id)})).json()
    assert "body" not in listed


async def test_a_row_from_before_bodies_were_kept_has_none(audit):
    _, client = audit
    old = await client.get(f"/events/{OLD}")
    assert old.status_code == 200
    assert old.json()["body"] is None and old.json()["correlation_id"] == "c-old"


async def test_an_event_the_trail_does_not_have_is_404(audit):
    _, client = audit
    missing = await client.get(f"/events/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert "audit trail" in missing.json()["detail"]
