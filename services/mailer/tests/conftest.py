"""A mailer's inbox and subscriptions on a real SMTP sink and a real SQLite database."""

from __future__ import annotations

import pytest

from devstack import smtp_sink
from devstack.stack import free_port
from mailer import store
from mailer.settings import Settings
from mailer.spec import SPEC
from messaging import inbox
from messaging.chassis import db
from messaging.inbox import Inbox


@pytest.fixture
async def mailer(tmp_path):
    """(inbox, subscriptions, mail directory) of a mailer on a real SMTP sink."""
    controller, _ = smtp_sink.start(tmp_path / "mail", port=free_port())
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/mailer.db")
    await db.create_schema(engine, store.metadata, inbox.metadata)
    settings = Settings(smtp_host="127.0.0.1", smtp_port=controller.port)
    assert SPEC.consumes is not None
    yield Inbox(db.session_factory(engine)), SPEC.consumes.registry(settings), tmp_path / "mail"
    await engine.dispose()
    controller.stop()
