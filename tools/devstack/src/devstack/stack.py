"""The native stack as local processes: what `make run`, the end-to-end tests, the chaos
check and the benchmark all start. Each service is `python -m <service>` with its settings
in the environment, exactly as docs/design.md (section 2) runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from messaging import spec

# Every installed service, from the specs (messaging/spec.py), ordered by default port.
SERVICES = spec.names()
DEFAULT_PORTS = {s.name: s.port for s in spec.installed()}


# Ports for the processes a test, a check or the bench starts. Not the kernel's pick (port 0):
# that comes from the ephemeral range (32768-60999 on Linux), which every outgoing
# connection also draws from, so another process's client could take the port between the
# pick and the server's bind. Below that range, and with each test worker of `make test`
# (pytest-xdist names it in PYTEST_XDIST_WORKER, gw0, gw1, ...) in a slice of its own, no
# one else is handed the same port.
PORT_RANGE = range(20000, 32000)
PORT_SLICES = 8
_next_port: int | None = None  # the index in this process's slice to try first


def port_slice(worker: str | None) -> range:
    """The ports one process picks from: its test worker's slice (gw0, gw1, ...) or, outside
    pytest-xdist, the last slice."""
    size = len(PORT_RANGE) // PORT_SLICES
    index = PORT_SLICES - 1
    if worker and worker.startswith("gw") and worker[2:].isdigit():
        index = int(worker[2:]) % (PORT_SLICES - 1)
    start = PORT_RANGE.start + index * size
    return range(start, start + size)


def free_port() -> int:
    """A port nothing listens on now, not handed out by this process a moment ago (each
    call takes the next port of the slice, wrapping), and in no other test worker's slice."""
    global _next_port
    ports = port_slice(os.environ.get("PYTEST_XDIST_WORKER"))
    # Where to begin differs per process, so two processes of one slice rarely meet.
    offset = os.getpid() % len(ports) if _next_port is None else _next_port
    for i in range(len(ports)):
        port = ports[(offset + i) % len(ports)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port = (offset + i + 1) % len(ports)
        return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path | None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """Every service sharing one broker vhost, each with its own database."""

    rabbitmq_url: str
    database_urls: dict[str, str]
    smtp_port: int
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    cwd: Path = field(default_factory=Path.cwd)
    # Per-service broker URLs (each service as its own least-privilege user); a service not
    # named here uses `rabbitmq_url`.
    rabbitmq_urls: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    # The interpreter that runs `-m <service>`: another tree's .venv python runs that tree's
    # services (the benchmark's same-run before/after).
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        for service in spec.installed():
            name = service.name
            env = {
                **os.environ,
                "PORT": str(self.ports[name]),
                "DATABASE_URL": self.database_urls[name],
                "RABBITMQ_URL": self.rabbitmq_urls.get(name, self.rabbitmq_url),
                **{k: v.format(smtp_port=self.smtp_port) for k, v in service.local_env.items()},
                **self.extra_env,
            }
            log = self.log_dir / f"{name}.log" if self.log_dir else None
            self.services[name] = ServiceProcess(name, self.ports[name], env, log)

    def url(self, name: str) -> str:
        return self.services[name].url

    def start(self, *names: str) -> None:
        for name in names or SERVICES:
            svc = self.services[name]
            out = open(svc.log_path, "ab") if svc.log_path else None  # noqa: SIM115
            svc.process = subprocess.Popen(
                [self.python, "-m", name], env=svc.env, cwd=self.cwd,
                stdout=out, stderr=subprocess.STDOUT if out else None,
            )

    def wait_ready(self, *names: str, timeout: float = 30.0) -> None:
        """Poll each service's /readyz until it answers 200, or fail with its log tail."""
        deadline = time.monotonic() + timeout
        for name in names or SERVICES:
            svc = self.services[name]
            wait_until_ready(name, svc.url, svc.process, svc.log_path, deadline)

    def signal(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.services[name].process
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def wait_exit(self, name: str, timeout: float = 20.0) -> int:
        proc = self.services[name].process
        assert proc is not None
        return proc.wait(timeout)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.wait_exit(name)

    def stop(self, timeout: float = 20.0) -> None:
        for name in SERVICES:
            self.signal(name, signal.SIGTERM)
        for name in SERVICES:
            proc = self.services[name].process
            if proc is None:
                continue
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        return log_tail(self.services[name].log_path, lines)


def log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return "(no log file)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_ready(name: str, url: str, process: subprocess.Popen | None,
                     log_path: Path | None, deadline: float) -> None:
    """Poll `url`/readyz until it answers 200; fail with the log tail if the process exits
    or the deadline (time.monotonic()) passes."""
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready in time:\n{log_tail(log_path)}")
        time.sleep(0.05)
