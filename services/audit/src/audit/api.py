import json
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from audit import store
from messaging.chassis.http import problem


class AuditRecord(BaseModel):
    event_id: str
    event_type: str
    order_id: str
    sequence: int
    occurred_at: datetime
    correlation_id: str
    trace_id: str | None
    received_at: datetime


class AuditedEvent(AuditRecord):
    """A record with the event's whole body (null for a row from before bodies were kept)."""

    body: dict[str, Any] | None


def router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    api = APIRouter()

    @api.get("/events", response_model=list[AuditRecord])
    async def events(order_id: uuid.UUID) -> list[AuditRecord]:
        async with sessions() as session:
            rows = await store.events_of_order(session, str(order_id))
        return [AuditRecord(**row) for row in rows]

    @api.get("/events/{event_id}", response_model=AuditedEvent,
             responses={404: problem("No event with this id is in the audit trail")})
    async def event(event_id: uuid.UUID) -> AuditedEvent:
        async with sessions() as session:
            row = await store.event(session, str(event_id))
        if row is None:
            raise HTTPException(404, f"no event {event_id} in the audit trail")
        body = row.pop("body")
        return AuditedEvent(**row, body=json.loads(body) if body is not None else None)

    return api
