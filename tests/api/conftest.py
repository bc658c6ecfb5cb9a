"""A payment process of its own for a test module, with the settings the module gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from devstack.stack import free_port, wait_until_ready


@pytest.fixture(scope="module")
def start_payment(tmp_path_factory) -> Iterator[Callable[..., tuple[str, Path]]]:
    """`url, log_path = start_payment(HTTP_MAX_CONNECTIONS="8", ...)`: payment on a free
    port, SQLite, a throwaway vhost; stopped when the module is done."""
    from devstack import throwaway

    with ExitStack() as stack:
        def start(**env: str) -> tuple[str, Path]:
            tmp = tmp_path_factory.mktemp("payment")
            port = free_port()
            _, amqp_url = stack.enter_context(throwaway.throwaway_vhost("payment"))
            log = stack.enter_context(open(tmp / "payment.log", "ab"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "payment"],
                env={**os.environ, "PORT": str(port), "RABBITMQ_URL": amqp_url,
                     "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/payment.db", **env},
                stdout=log, stderr=subprocess.STDOUT,
            )
            stack.callback(proc.wait, 20)
            stack.callback(proc.terminate)
            url = f"http://127.0.0.1:{port}"
            wait_until_ready("payment", url, proc, tmp / "payment.log", time.monotonic() + 60)
            return url, tmp / "payment.log"

        yield start
