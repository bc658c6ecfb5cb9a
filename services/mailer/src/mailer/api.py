import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mailer import store


class SentMail(BaseModel):
    event_id: str
    to: str
    subject: str
    message_id: str
    sent_at: datetime


def router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    api = APIRouter()

    @api.get("/mails", response_model=list[SentMail])
    async def mails(order_id: uuid.UUID) -> list[SentMail]:
        async with sessions() as session:
            rows = await store.mails_of_order(session, str(order_id))
        return [SentMail(**row) for row in rows]

    return api
