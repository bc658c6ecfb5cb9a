"""The services' HTTP server sleeps while idle (no 0.1 s tick), yet stops at once when told
to and serves a Date header that is current (messaging.chassis.server.QuietServer)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from devstack.stack import free_port
from devstack.wait import eventually, eventually_async
from messaging.chassis.server import DatedServerState, Limits, QuietServer, uvicorn_config


def hello_app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


@pytest.fixture
async def serving():
    """A QuietServer on a free port, serving; yields (server, base url, its task)."""
    port = free_port()
    server = QuietServer(uvicorn_config(hello_app(), "127.0.0.1", port, Limits(),
                                        lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually_async(lambda: _true(server.started), message="server started")
        yield server, f"http://127.0.0.1:{port}", task
    finally:
        server.should_exit = True
        await asyncio.wait({task}, timeout=10)


@pytest.mark.unit
def test_the_default_headers_carry_the_date_of_the_second_they_are_read_and_the_rest():
    state = DatedServerState(True, [(b"server", b"shop"), (b"date", b"stale")])
    before = int(time.time())
    headers = dict(state.default_headers)
    after = time.time()
    assert headers[b"server"] == b"shop"
    assert before <= parsedate_to_datetime(headers[b"date"].decode()).timestamp() <= after
    assert DatedServerState(False, [(b"server", b"shop")]).default_headers == [
        (b"server", b"shop")]


@pytest.mark.integration
async def test_each_response_carries_the_date_of_the_second_it_was_made(serving):
    _, url, _ = serving
    dates: set[str] = set()
    async with httpx.AsyncClient(base_url=url) as client:

        async def a_second_date_seen() -> bool:
            before = int(time.time())
            response = await client.get("/hello")
            after = time.time()
            assert response.status_code == 200
            date = response.headers["date"]
            assert before <= parsedate_to_datetime(date).timestamp() <= after, (date, after)
            dates.add(date)
            return len(dates) >= 2

        # Requests until the clock has passed a second: the Date follows it, no timer needed.
        await eventually_async(a_second_date_seen, timeout=5, message="the Date moves on")


@pytest.mark.integration
async def test_setting_should_exit_stops_an_idle_server_at_once(serving):
    server, _, task = serving
    asked = time.monotonic()
    server.should_exit = True  # what uvicorn's signal handler (and apps/inprocess) does
    # Without a wake-up the server would wait forever: nothing else would run its loop.
    await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - asked < 2


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_served_process_sleeps_while_idle_and_stops_at_once_on_sigterm(loop):
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            from fastapi import FastAPI
            from messaging.chassis.server import serve
            from messaging.chassis.settings import ServiceSettings

            app = FastAPI()

            @app.get("/hello")
            async def hello():
                return {{}}

            serve(app, ServiceSettings(port={port}))
        """)],
        env=os.environ | {"EVENT_LOOP": loop},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        eventually(lambda: _answers(f"http://127.0.0.1:{port}/hello", child), timeout=30,
                   message="child serving")
        woken = _voluntary_switches(child.pid)
        time.sleep(2)  # the measurement window, not a wait for anything
        # uvicorn's own server wakes ten times a second (20 here); one wake-up or two may
        # come from the request's end.
        assert _voluntary_switches(child.pid) - woken <= 4
        asked = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 0, child.stdout.read() if child.stdout else ""
        assert time.monotonic() - asked < 5
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _answers(url: str, child: subprocess.Popen) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        assert child.poll() is None, child.stdout.read() if child.stdout else ""
        return False


def _voluntary_switches(pid: int) -> int:
    """How often the process's threads have gone to sleep so far (each wake-up is one)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


async def _true(value: bool) -> bool:
    return value
