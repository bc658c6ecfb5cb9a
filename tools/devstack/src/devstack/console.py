"""The failed-message console (apps/console) as a local process, beside a Stack: what
`make run`, the console's end-to-end and browser tests and its benchmark start."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.stack import wait_until_ready

DEFAULT_PORT = 8005
LOCAL_USER = "operator"


def local_password() -> str:
    """A fresh password for a local run (printed by `make run`), never a fixed one."""
    return secrets.token_urlsafe(12)


def local_admin_token() -> str:
    """A fresh ADMIN_TOKEN for a local run: the consumers' and the console's."""
    return secrets.token_urlsafe(24)


@dataclass
class ConsoleProcess:
    rabbitmq_url: str
    database_url: str
    port: int = DEFAULT_PORT
    user: str = LOCAL_USER
    password: str = field(default_factory=local_password)
    log_path: Path | None = None
    # The consumers it shows and steers ({service: base URL}) and their ADMIN_TOKEN.
    service_urls: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    python: str = field(default_factory=lambda: sys.executable)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def start(self) -> None:
        env = {**os.environ, "PORT": str(self.port), "DATABASE_URL": self.database_url,
               "RABBITMQ_URL": self.rabbitmq_url, "CONSOLE_USER": self.user,
               "CONSOLE_PASSWORD": self.password,
               "CONSOLE_SERVICE_URLS": ",".join(f"{name}={url}"
                                                for name, url in self.service_urls.items()),
               **({"ADMIN_TOKEN": self.admin_token} if self.admin_token else {}),
               **self.extra_env}
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen([self.python, "-m", "console"], env=env,
                                        stdout=out, stderr=subprocess.STDOUT if out else None)

    def wait_ready(self, timeout: float = 40.0) -> None:
        wait_until_ready("console", self.url, self.process, self.log_path,
                         time.monotonic() + timeout)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
