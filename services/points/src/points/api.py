from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import CUSTOMER_ID_PATTERN
from points import store


class Entry(BaseModel):
    order_id: str
    event_id: str
    delta: int
    reason: str
    at: datetime


class Points(BaseModel):
    customer_id: str
    balance: int
    entries: list[Entry]


def router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    api = APIRouter()

    @api.get("/customers/{customer_id}/points", response_model=Points)
    async def customer_points(
        customer_id: Annotated[str, Path(pattern=CUSTOMER_ID_PATTERN)],
    ) -> Points:
        async with sessions() as session:
            entries = await store.customer_entries(session, customer_id)
        return Points(
            customer_id=customer_id,
            balance=sum(e["delta"] for e in entries),
            entries=[Entry(**e) for e in entries],
        )

    return api

