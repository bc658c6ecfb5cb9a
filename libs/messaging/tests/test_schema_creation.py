"""Several instances of one service start at once on one PostgreSQL database (scale-out):
each creates the schema it needs, and none fails because another is creating it too."""

import asyncio

import pytest
from sqlalchemy import inspect

from devstack import throwaway
from messaging import inbox, outbox_store
from messaging.chassis import db

pytestmark = pytest.mark.integration


async def test_instances_starting_together_on_one_postgres_database_all_start():
    async with throwaway.throwaway_postgres() as url:
        engines = [db.create_engine(url) for _ in range(6)]
        try:
            await asyncio.gather(*(db.create_schema(engine, outbox_store.metadata, inbox.metadata)
                                   for engine in engines))
            async with engines[0].connect() as conn:
                tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            assert {*outbox_store.metadata.tables, *inbox.metadata.tables} <= tables
        finally:
            for engine in engines:
                await engine.dispose()
