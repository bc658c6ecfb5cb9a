"""A service that cannot start exits at once, non-zero, with one line (finding 7).

Exit codes (docs/limits.md, "Start-up"): 2 for a bad setting, 3 for a resource it cannot
have at start (its port, its database). The broker is the exception that is retried: the
outbox and the inbox exist so that a service works on while it is away.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from devstack.stack import free_port

pytestmark = pytest.mark.integration

SERVICES = ["payment", "points", "mailer", "audit"]


def run_service(service: str, tmp_path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", service], capture_output=True, text=True, timeout=30,
        env={**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/{service}.db",
             # A broker nobody listens on: only a process that waits for it would hang.
             "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/", **env},
    )
    return result, time.monotonic() - started


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stderr + result.stdout).splitlines()
            if "ERROR" in line or "cannot" in line or "invalid setting" in line]


@pytest.mark.parametrize("service", SERVICES)
def test_a_port_in_use_exits_3_at_once_with_one_line(service, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, took = run_service(service, tmp_path, PORT=str(port))
    assert result.returncode == 3, result.stderr
    assert took < 15
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_host_that_is_no_address_exits_2_naming_it(tmp_path):
    result, _ = run_service("payment", tmp_path, HOST="256.1.1.1", PORT=str(free_port()))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("payment: invalid setting: HOST:")


def test_a_host_that_is_not_this_machine_exits_3(tmp_path):
    result, took = run_service("payment", tmp_path, HOST="192.0.2.1", PORT=str(free_port()))
    assert result.returncode == 3
    assert "cannot listen on 192.0.2.1" in result.stderr and took < 15


@pytest.mark.parametrize("service", ["payment", "points"])
def test_an_unreachable_database_exits_3_with_one_line(service, tmp_path):
    url = f"postgresql+asyncpg://nobody:x@127.0.0.1:{free_port()}/none"
    result, took = run_service(service, tmp_path, DATABASE_URL=url, PORT=str(free_port()))
    assert result.returncode == 3
    assert took < 20
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "start-up failed" in line]
    assert "Connect call failed" in line or "refused" in line.lower()
