"""Fixtures every test layer shares: throwaway broker vhosts, databases, an SMTP sink, the stack.

Each test gets its own vhost and random ids and cleans up after itself, so tests never see
each other's messages and the local broker is left as it was found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import smtp_sink, throwaway
from devstack.stack import SERVICES, Stack, free_port
from messaging.chassis import db
from messaging.inbox import Inbox
from messaging.spec import Subscriptions
from messaging.speed.inbox_batching import InboxBatcher


def pytest_collection_modifyitems(items):
    """`make test` spreads the suite over worker processes (pytest-xdist, --dist loadgroup).
    A module's tests stay on one worker, so a module-scoped stack starts once; every test of
    the RabbitMQ 4 node shares one worker, so that node boots once. The two ways of the speed
    layer are two groups (a function-scoped fixture: nothing of the module is shared between
    them), so the slow guarantee tests that run both ways are not all on one worker."""
    for item in items:
        group = "rabbit4" if "rabbit4" in item.fixturenames else item.nodeid.split("::")[0]
        speed = getattr(item, "callspec", None) and item.callspec.params.get("speed_layer")
        if speed and group != "rabbit4":
            group = f"{group}::speed-{speed}"
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def rabbit4():
    """A RabbitMQ 4 node (devstack/rabbit4.py: Debian's 4.0.5 in a network namespace) booted
    from the project's rabbitmq.conf and definitions, for the tests that differ between 3.10
    and 4. Skipped, with the reason printed, where it cannot run (not root)."""
    from devstack import rabbit4 as r4

    reason = r4.unavailable_reason()
    if reason:
        pytest.skip(f"{reason}; the RabbitMQ 4 variant of this test is not run")
    with r4.Rabbit4() as broker:
        yield broker


@pytest.fixture
def vhost():
    """(name, amqp_url) of a fresh, empty vhost."""
    with throwaway.throwaway_vhost() as pair:
        yield pair


@pytest.fixture
def amqp_url(vhost) -> str:
    return vhost[1]


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request, tmp_path):
    """The same test on an embedded SQLite file and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/test.db"
    else:
        async with throwaway.throwaway_postgres() as url:
            yield url


@pytest.fixture(params=["on", "off"], ids=["speed-on", "speed-off"])
def speed_layer(request) -> str:
    """SPEED_LAYER: the guarantee tests run with the speed layer (group commit, inbox
    batching, the hand-off to the relay) and without it, the plain path."""
    return request.param


class BatchedInbox:
    """An Inbox whose `process` goes through the speed layer's batcher (one per set of
    subscriptions), as a consumer's runtime runs it with SPEED_LAYER=on; the rest of the
    Inbox's API is the inbox's own."""

    def __init__(self, box: Inbox):
        self._box = box
        self._batchers: dict[tuple[object, ...], InboxBatcher] = {}

    async def process(self, event, subscriptions: Subscriptions):
        key = tuple(subscriptions)
        if key not in self._batchers:
            self._batchers[key] = InboxBatcher(self._box, subscriptions)
        return await self._batchers[key].process(event)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()

    def __getattr__(self, name: str):
        return getattr(self._box, name)


@pytest.fixture
async def inbox_for(speed_layer):
    """A factory: `inbox_for(sessions)` gives an Inbox that applies events on the plain
    path (SPEED_LAYER=off) or through the speed layer's batcher (on)."""
    made: list[BatchedInbox] = []

    def make(sessions):
        if speed_layer == "off":
            return Inbox(sessions)
        made.append(BatchedInbox(Inbox(sessions)))
        return made[-1]

    yield make
    for box in made:
        await box.close()


@pytest.fixture
async def sessions_for(database_url):
    """A factory: `await sessions_for(*metadatas)` gives a session maker on the test's
    database (SQLite and PostgreSQL, see `database_url`) with those tables created."""
    engines = []

    async def make(*metadatas):
        engine = db.create_engine(database_url)
        engines.append(engine)
        await db.create_schema(engine, *metadatas)
        return db.session_factory(engine)

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture
def smtp(tmp_path):
    """A real SMTP server on a free port, saving mails under tmp_path/mail."""
    port = free_port()
    controller, handler = smtp_sink.start(tmp_path / "mail", port=port)
    handler.port = port
    yield handler
    controller.stop()


def start_stack(tmp_path: Path, amqp_url: str, smtp_port: int, **env: str) -> Stack:
    stack = Stack(
        rabbitmq_url=amqp_url,
        database_urls={s: f"sqlite+aiosqlite:///{tmp_path}/{s}.db" for s in SERVICES},
        smtp_port=smtp_port,
        ports={s: free_port() for s in SERVICES},
        log_dir=tmp_path,
        extra_env={"LOG_LEVEL": "INFO", **env},
    )
    stack.start()
    try:
        stack.wait_ready(timeout=40)
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The four services as processes on free ports, one vhost, SQLite files, an SMTP sink."""
    tmp = tmp_path_factory.mktemp("stack")
    port = free_port()
    controller, handler = smtp_sink.start(tmp / "mail", port=port)
    with throwaway.throwaway_vhost("e2e") as (name, url):
        running = start_stack(tmp, url, port)
        running.vhost = name
        running.mail_dir = tmp / "mail"
        running.smtp = handler
        try:
            yield running
        finally:
            running.stop()
            controller.stop()
