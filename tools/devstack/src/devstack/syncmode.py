"""The synchronous mode as a local process: `python -m inprocess`, every service's HTTP
API on its own port of one process, no broker. Used by the two-mode behaviour tests and the
latency comparison, next to `Stack` (the asynchronous mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.stack import DEFAULT_PORTS, SERVICES, log_tail, wait_until_ready
from messaging import spec


@dataclass
class SyncShop:
    database_urls: dict[str, str]
    smtp_port: int
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    python: str = field(default_factory=lambda: sys.executable)  # as Stack.python

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        env = dict(os.environ)
        for service in spec.installed():  # one process: every service's local settings
            env |= {k: v.format(smtp_port=self.smtp_port) for k, v in service.local_env.items()}
        env |= self.extra_env
        for name in SERVICES:
            env[f"{name.upper()}_PORT"] = str(self.ports[name])
            env[f"{name.upper()}_DATABASE_URL"] = self.database_urls[name]
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen(
            [self.python, "-m", "inprocess"], env=env,
            stdout=out, stderr=subprocess.STDOUT if out else None,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll every port's /readyz until it answers 200, or fail with the log tail."""
        deadline = time.monotonic() + timeout
        for name in SERVICES:
            wait_until_ready(f"inprocess ({name})", self.url(name), self.process,
                             self.log_path, deadline)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)
