"""A mailer run in memory through its spec and real inbox (messaging.testing), sending to a
real SMTP sink."""

from __future__ import annotations

import pytest

from devstack import smtp_sink
from devstack.stack import free_port
from mailer.settings import Settings
from mailer.spec import SPEC
from messaging.testing.service import InMemoryService


@pytest.fixture
async def mailer(tmp_path):
    """(the mailer in memory, mail directory) of a mailer on a real SMTP sink."""
    controller, _ = smtp_sink.start(tmp_path / "mail", port=free_port())
    settings = Settings(smtp_host="127.0.0.1", smtp_port=controller.port)
    async with InMemoryService(SPEC, settings) as service:
        yield service, tmp_path / "mail"
    controller.stop()
