"""The consumers seen and steered in the console, against the real thing: the mailer as its
own process on a throwaway vhost, the console as its own process with the mailer's
ADMIN_TOKEN, and a second "service" that does not answer."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from console.consumers import SteerFailed, steer
from console.main import create_app
from console.settings import Settings
from devstack import throwaway
from devstack.console import ConsoleProcess, local_admin_token
from devstack.stack import SERVICES, Stack, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-consumers")
    token = local_admin_token()
    with throwaway.throwaway_vhost("console-consumers") as (_vhost, url):
        stack = Stack(rabbitmq_url=url, smtp_port=free_port(), log_dir=tmp,
                      database_urls={s: f"sqlite+aiosqlite:///{tmp}/{s}.db" for s in SERVICES},
                      ports={s: free_port() for s in SERVICES},
                      extra_env={"ADMIN_TOKEN": token})
        console = ConsoleProcess(
            rabbitmq_url=url, database_url=f"sqlite+aiosqlite:///{tmp}/c.db",
            port=free_port(), log_path=tmp / "console.log", admin_token=token,
            # Nothing listens on the second one's port.
            service_urls={"mailer": stack.url("mailer"),
                          "points": f"http://127.0.0.1:{free_port()}"},
            extra_env={"CONSOLE_SERVICES": "mailer"})
        try:
            stack.start("mailer")
            console.start()
            stack.wait_ready("mailer", timeout=120)
            console.wait_ready(timeout=120)
            yield stack, console
        finally:
            console.stop()
            stack.stop()


def api(console: ConsoleProcess, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{console.url}{path}", auth=console.auth, timeout=10,
                         **kwargs)


def consumers(console: ConsoleProcess) -> dict[str, dict]:
    response = api(console, "GET", "/api/consumers")
    assert response.status_code == 200, response.text
    return {c["service"]: c for c in response.json()}


def mailer_readiness(stack: Stack) -> dict:
    response = httpx.get(f"{stack.url('mailer')}/readyz", timeout=10)
    assert response.status_code == 200, response.text  # paused on purpose is healthy
    consumer: dict = response.json()["consumer"]
    return consumer


def csrf_token(console: ConsoleProcess, page: str) -> str:
    html = api(console, "GET", page).text
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, html
    return found.group(1)


def test_the_mailer_paused_and_resumed_through_the_console_is_seen_and_audited(system):
    stack, console = system
    assert consumers(console)["mailer"]["state"] == "running"

    response = api(console, "POST", "/api/consumers/mailer/pause",
                   json={"reason": "SMTP maintenance"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "paused"
    listed = consumers(console)["mailer"]
    assert (listed["state"], listed["by"], listed["reason"]) == (
        "paused", "operator", "SMTP maintenance")
    assert listed["problem"] is None
    assert mailer_readiness(stack)["state"] == "paused"
    page = api(console, "GET", "/consumers")
    assert page.status_code == 200
    assert 'data-service="mailer" data-state="paused"' in page.text
    assert "SMTP maintenance" in page.text

    # Resumed by the page's form, as a person would.
    response = api(console, "POST", "/consumers/mailer/resume",
                   data={"csrf_token": csrf_token(console, "/consumers")})
    assert response.status_code == 303, response.text
    assert mailer_readiness(stack)["state"] == "running"
    assert consumers(console)["mailer"]["state"] == "running"

    trail = [(r["user"], r["action"], r["target"], r["detail"])
             for r in api(console, "GET", "/api/audit").json()]
    assert (console.user, "pause-consumer", "consumer mailer",
            "reason: SMTP maintenance; now paused") in trail
    assert (console.user, "resume-consumer", "consumer mailer", "now running") in trail


def test_a_service_that_does_not_answer_is_shown_unreachable(system):
    _stack, console = system
    points = consumers(console)["points"]
    assert points["state"] is None and points["problem"].startswith("not reachable")
    page = api(console, "GET", "/consumers")
    assert page.status_code == 200
    assert 'data-service="points" data-state="unreachable"' in page.text
    # Steering it fails with the reason, and the attempt is in the audit trail.
    response = api(console, "POST", "/api/consumers/points/pause", json={"reason": "test"})
    assert response.status_code == 502 and "not reachable" in response.json()["detail"]
    [attempt] = [r for r in api(console, "GET", "/api/audit").json()
                 if r["target"] == "consumer points"]
    assert attempt["action"] == "pause-consumer"
    assert attempt["detail"].startswith("reason: test; failed: not reachable")


def test_bad_steers_are_refused_and_the_mailer_keeps_running(system):
    stack, console = system
    assert api(console, "POST", "/api/consumers/nobody/resume").status_code == 404
    for body in ({"reason": ""}, {"reason": "two\nlines"}, {}, {"reason": "x", "extra": 1}):
        response = api(console, "POST", "/api/consumers/mailer/pause", json=body)
        assert response.status_code == 422, (body, response.text)
    response = api(console, "POST", "/consumers/mailer/pause",
                   data={"csrf_token": csrf_token(console, "/consumers"), "reason": ""})
    assert response.status_code == 422 and "reason" in response.text
    for data in ({"reason": "no token"}, {"reason": "forged", "csrf_token": "forged"}):
        response = api(console, "POST", "/consumers/mailer/pause", data=data)
        assert response.status_code == 403, response.text
    assert mailer_readiness(stack)["state"] == "running"


def test_the_mailer_refuses_a_wrong_token(system):
    stack, _console = system
    with pytest.raises(SteerFailed, match="answered 401"):
        asyncio.run(steer(stack.url("mailer"), "pause", local_admin_token(), "wrong token"))
    assert mailer_readiness(stack)["state"] == "running"


@pytest.mark.parametrize("method,path", [
    ("GET", "/consumers"), ("GET", "/api/consumers"), ("POST", "/api/consumers/mailer/pause"),
    ("POST", "/api/consumers/mailer/resume"), ("POST", "/consumers/mailer/pause"),
    ("POST", "/consumers/mailer/resume"),
])
def test_the_consumers_need_the_consoles_credentials(system, method, path):
    stack, console = system
    for auth in (None, (console.user, "wrong password")):
        response = httpx.request(method, f"{console.url}{path}", auth=auth, timeout=10,
                                 json={"reason": "intruder"})
        assert response.status_code == 401, (auth, response.text)
    assert mailer_readiness(stack)["state"] == "running"


def test_without_admin_token_the_console_shows_but_does_not_steer(system, tmp_path):
    stack, _console = system
    settings = Settings(console_user="operator", console_password="a-long-password",
                        database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db",
                        console_services="mailer",
                        console_service_urls=f"mailer={stack.url('mailer')}")
    # In process, without its lifespan (no broker link): the refusal comes before any.
    transport = httpx.ASGITransport(app=create_app(settings))

    async def use() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://console",
                                     auth=("operator", "a-long-password")) as client:
            return (await client.get("/consumers"),
                    await client.post("/api/consumers/mailer/pause",
                                      json={"reason": "maintenance"}))

    page, response = asyncio.run(use())
    assert page.status_code == 200 and "ADMIN_TOKEN is not set" in page.text
    assert 'data-service="mailer" data-state="running"' in page.text
    assert response.status_code == 409 and "ADMIN_TOKEN" in response.json()["detail"]
    assert mailer_readiness(stack)["state"] == "running"
