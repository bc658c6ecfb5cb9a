"""`make run` (`python -m devstack`): every service, the failed-message console and a local
SMTP sink on this machine; Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from devstack import smtp_sink
from devstack.console import ConsoleProcess, local_admin_token
from devstack.stack import SERVICES, Stack
from messaging import spec

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@localhost:5672/"


def broker_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def main() -> int:
    rabbitmq_url = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    if not broker_reachable(rabbitmq_url):
        host = urlsplit(rabbitmq_url).netloc.rpartition("@")[2]
        print(f"make run: RabbitMQ is not reachable at {host}; start one with "
              "`sudo rabbitmq-server -detached` (or `docker compose up -d rabbitmq`) and retry.",
              file=sys.stderr)
        return 1
    smtp_port = int(os.environ.get("SMTP_PORT", "1025"))
    mail_dir = Path("var/mail")
    controller, _ = smtp_sink.start(mail_dir, port=smtp_port)
    # The consumers' ADMIN_TOKEN (their pause and resume routes, which the console calls):
    # one of this run only, unless ADMIN_TOKEN chooses one.
    admin_token = os.environ.get("ADMIN_TOKEN") or local_admin_token()
    stack = Stack(
        rabbitmq_url=rabbitmq_url,
        database_urls={s: os.environ.get(f"{s.upper()}_DATABASE_URL",
                                         f"sqlite+aiosqlite:///var/{s}.db") for s in SERVICES},
        smtp_port=smtp_port,
        extra_env={"ADMIN_TOKEN": admin_token},
    )
    # The console with credentials of this run only (CONSOLE_PASSWORD to choose one).
    console = ConsoleProcess(
        rabbitmq_url=rabbitmq_url,
        service_urls={s.name: stack.url(s.name) for s in spec.consumers()},
        admin_token=admin_token,
        database_url=os.environ.get("CONSOLE_DATABASE_URL", "sqlite+aiosqlite:///var/console.db"),
        **({"password": os.environ["CONSOLE_PASSWORD"]} if os.environ.get("CONSOLE_PASSWORD")
           else {}),
    )
    stopping = False

    def _stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        stack.start()
        console.start()
        stack.wait_ready(timeout=90)  # a cold first start compiles every module
        console.wait_ready(timeout=90)
        print("\nMini EC is running:")
        for name in SERVICES:
            print(f"  {name:<8} {stack.url(name)}")
        print(f"  console  {console.url}  (user {console.user}, password {console.password})")
        print(f"  mail     smtp://127.0.0.1:{smtp_port} -> {mail_dir}/*.eml")
        print(f"  ADMIN_TOKEN={admin_token}  (the consumers' pause and resume: the console's "
              "Consumers page, or python -m messaging.operations.consumerctl)")
        print("Ctrl-C stops everything.\n", flush=True)
        while not stopping:
            for name in SERVICES:
                proc = stack.services[name].process
                if proc is not None and proc.poll() is not None:
                    print(f"make run: {name} exited ({proc.returncode}); stopping", file=sys.stderr)
                    return 1
            if console.process is not None and console.process.poll() is not None:
                print(f"make run: console exited ({console.process.returncode}); stopping",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        console.stop()
        stack.stop()
        controller.stop()
