import uuid
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shipping import store


class Shipment(BaseModel):
    shipment_id: str
    order_id: str
    status: Literal["shipped", "return_requested"]
    carrier: str
    tracking_number: str
    shipped_at: datetime


def router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    api = APIRouter()

    @api.get("/shipments", response_model=list[Shipment])
    async def shipments(order_id: uuid.UUID) -> list[Shipment]:
        async with sessions() as session:
            rows = await store.of_order(session, str(order_id))
        return [Shipment(**row) for row in rows]

    return api
