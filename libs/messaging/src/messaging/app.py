"""The FastAPI app of a consuming service, assembled from the parts its composition root picks."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import APIRouter, FastAPI
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from messaging import db, inbox, telemetry
from messaging.http import install_common
from messaging.inbox import Handler, SideEffect
from messaging.runtime import ConsumerRuntime
from messaging.settings import ConsumerSettings

RouterFactory = Callable[[async_sessionmaker[AsyncSession]], APIRouter]


def consumer_app(
    service: str,
    settings: ConsumerSettings,
    *,
    metadata: MetaData,
    handler: Handler,
    before: SideEffect | None = None,
    router: RouterFactory,
) -> FastAPI:
    """Engine -> inbox + consumer of `<service>.events` -> read API, health, metrics."""
    engine = db.create_engine(settings.database_url)
    sessions = db.session_factory(engine)
    runtime = ConsumerRuntime(service, settings, inbox.Inbox(sessions), handler, before)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        telemetry.instrument_engine(engine)
        with telemetry.untraced():  # start-up is not part of any trace
            await db.create_schema(engine, metadata, inbox.metadata)
        await runtime.start()
        yield
        await runtime.stop()
        await engine.dispose()

    app = FastAPI(title=f"Mini EC {service}", lifespan=lifespan)
    app.include_router(router(sessions))
    install_common(app, service, {"database": partial(db.ping, engine), "broker": runtime.check})
    return app
