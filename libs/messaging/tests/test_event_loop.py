"""EVENT_LOOP: every process runs on uvloop unless told `asyncio`, its consumer and relay too
(they run on the loop of the HTTP server that starts them)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
import uvloop

from devstack.stack import free_port
from devstack.wait import eventually
from messaging.chassis.server import loop_factory


@pytest.mark.unit
def test_the_loop_factory_makes_the_loop_named():
    for name, kind in (("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        loop = loop_factory(name)()
        try:
            assert isinstance(loop, kind)
            assert name == "uvloop" or not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


@pytest.mark.integration
@pytest.mark.parametrize(("setting", "module"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_a_served_app_and_its_lifespan_tasks_run_on_the_configured_loop(setting, module):
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import asyncio
            from contextlib import asynccontextmanager
            from fastapi import FastAPI
            from messaging.chassis.server import serve
            from messaging.chassis.settings import ServiceSettings

            seen = {{}}

            @asynccontextmanager
            async def lifespan(app):  # where a consumer or relay would be started
                seen["lifespan"] = type(asyncio.get_running_loop()).__module__
                yield

            app = FastAPI(lifespan=lifespan)

            @app.get("/loop")
            async def loop():
                return seen | {{"request": type(asyncio.get_running_loop()).__module__}}

            serve(app, ServiceSettings(port={port}))
        """)],
        env={k: v for k, v in os.environ.items() if k != "EVENT_LOOP"}
        | ({"EVENT_LOOP": setting} if setting else {}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        def answer() -> dict | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/loop", timeout=1).json()
            except httpx.HTTPError:
                assert child.poll() is None, child.stdout.read()
                return None

        seen = eventually(answer, timeout=30, message="child serving")
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0, child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
    # uvloop.Loop's module is "uvloop"; the standard loop's is "asyncio.unix_events".
    assert {k: v.split(".")[0] for k, v in seen.items()} == {
        "lifespan": module, "request": module}
