import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from audit import store


class AuditRecord(BaseModel):
    event_id: str
    event_type: str
    order_id: str
    sequence: int
    occurred_at: datetime
    correlation_id: str
    trace_id: str | None
    received_at: datetime


def router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    api = APIRouter()

    @api.get("/events", response_model=list[AuditRecord])
    async def events(order_id: uuid.UUID) -> list[AuditRecord]:
        async with sessions() as session:
            rows = await store.events_of_order(session, str(order_id))
        return [AuditRecord(**row) for row in rows]

    return api
