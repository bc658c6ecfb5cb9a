"""The HTTP server of every service: uvicorn bound before anything starts, with bounded reads.

- The listening socket is bound first: a port in use or an address that is not this host's
  stops the process at once with one line and exit code 3, before the app starts anything
  (a broker connection, a relay) that would keep it alive.
- Each request gets `header_timeout` seconds for its request line and headers and then
  `body_timeout` seconds for its body; a client slower than that is disconnected.
- At most `max_connections` connections hold a slot, one client address at most
  `client_share` of them (messaging.chassis.connection_slots decides): idle connections make room
  for new ones, oldest first, and keep-alive is cut short once three quarters are taken; a
  connection that finds no room gets `503` with `Retry-After` on its first request. What
  is refused or closed to make room is logged as counts, one line per `TALLY_SECONDS`.

The event loop is uvloop's unless `EVENT_LOOP=asyncio`; the consumer and the
outbox relay run on the same loop as the HTTP server (the app's lifespan starts them).

uvicorn turns SIGTERM and Ctrl-C into a graceful shutdown of the app's lifespan; a SIGTERM
then ends the process with exit 0 (bounded: messaging.chassis.runtime.STOP_BOUND_SECONDS).
docs/limits.md lists the limits and why.

The server is `QuietServer`: uvicorn's, without the 0.1 s tick that woke an idle process
ten times a second.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from messaging.chassis.connection_slots import ConnectionSlots, Drop, Refuse
from messaging.chassis.log_tally import LogTally
from messaging.chassis.runtime import HTTP_DRAIN_SECONDS, SPAN_FLUSH_SECONDS
from messaging.chassis.settings import ServiceSettings
from messaging.observability import telemetry

log = logging.getLogger(__name__)

# Exit code of a service that cannot start: port taken, database unreachable (uvicorn's own
# code for a failed start-up, so both causes read the same).
CANNOT_START = 3


# Keep-alive between requests once the slots are under pressure (uvicorn's own is 5 s).
PRESSURE_KEEP_ALIVE_SECONDS = 1  # whole seconds, as uvicorn's setting
# What a connection refused for want of a slot is told to wait, and how long it is held
# at most to read the request it is answered on.
RETRY_AFTER_SECONDS = 1
REFUSED_READ_SECONDS = 2.0
# Refused, dropped, evicted and too-slow connections: one log line per this many seconds.
TALLY_SECONDS = 5.0


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 512
    client_share: float = 0.5

    @classmethod
    def of(cls, settings: ServiceSettings) -> Limits:
        return cls(settings.http_header_timeout_seconds, settings.http_body_timeout_seconds,
                   settings.http_max_connections, settings.http_client_connection_share)


async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer on a connection that found no slot: try again shortly, on a new one."""
    body = (b'{"detail":"too many connections; retry after %d s"}' % RETRY_AFTER_SECONDS)
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"%d" % RETRY_AFTER_SECONDS), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def bounded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a read deadline per request and connection slots."""
    slots: ConnectionSlots[H11Protocol] = ConnectionSlots(limits.max_connections,
                                                          limits.client_share)
    tally = LogTally()

    def note(loop: asyncio.AbstractEventLoop, what: str, client: str) -> None:
        if tally.add(what, client):
            log.warning("HTTP connection from %s: %s (more are counted: one line per %g s)",
                        client, what, TALLY_SECONDS)
            loop.call_later(TALLY_SECONDS, summarise, loop)

    def summarise(loop: asyncio.AbstractEventLoop) -> None:
        line = tally.summary()
        if line is not None:
            log.warning("HTTP connections in the last %g s: %s", TALLY_SECONDS, line)
            loop.call_later(TALLY_SECONDS, summarise, loop)

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _timed_cycle: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn types it
            super().connection_made(transport)
            client = _address(self)
            decision = slots.admit(self, client)
            if isinstance(decision, Drop):
                note(self.loop, f"closed unanswered ({decision.reason})", client)
                transport.abort()
                return
            if isinstance(decision, Refuse):
                note(self.loop, f"answered 503 ({decision.reason})", client)
                self.app = too_many_connections  # whatever its first request is
                self._arm(min(limits.header_timeout, REFUSED_READ_SECONDS))
                return
            if decision.evict is not None:
                note(self.loop, "idle closed to make room", _address(decision.evict))
                decision.evict.transport.close()
            self._arm(limits.header_timeout)

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # a new request begins
                slots.busy(self)
                if self._deadline is None:  # not a new connection's: the next on a kept one
                    self._arm(limits.header_timeout)
            super().data_received(data)
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return
            if cycle is not self._timed_cycle:  # its headers are in: now its body
                self._timed_cycle = cycle
                self._arm(limits.body_timeout)
            if not cycle.more_body:
                self._disarm()

        def on_response_complete(self) -> None:
            # Read by uvicorn's own on_response_complete, which arms the keep-alive timer.
            self.timeout_keep_alive = (PRESSURE_KEEP_ALIVE_SECONDS if slots.under_pressure
                                       else self.config.timeout_keep_alive)
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle.response_complete:
                slots.idle(self)  # not when a pipelined request has begun already

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            slots.leave(self)
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                note(self.loop, "closed: request not read in time", _address(self))
                self.transport.abort()

    return BoundedH11Protocol


def _address(connection: H11Protocol) -> str:
    """The client's address, the key of its share of the slots."""
    return connection.client[0] if connection.client else "?"


def loop_factory(name: Literal["uvloop", "asyncio"]) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `EVENT_LOOP` names, for `asyncio.Runner` or uvicorn."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def uvicorn_config(
    app: ASGIApp, host: str, port: int, limits: Limits, **options: Any
) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, http=bounded_protocol(limits), log_config=None,
        access_log=False, timeout_graceful_shutdown=HTTP_DRAIN_SECONDS, **options,
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or exit 3 with one line saying why it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(CANNOT_START) from None
    sock.set_inheritable(True)
    return sock


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run the HTTP server until SIGTERM / Ctrl-C; the app's lifespan does the rest.

    uvicorn re-raises the SIGTERM it turned into the graceful stop; the handler below,
    which uvicorn puts back before re-raising, lets it pass, so the exit code is 0.
    """
    sock = bind(settings.host, settings.port)
    config = uvicorn_config(_start_up_in_one_line(app), settings.host, settings.port,
                            Limits.of(settings), lifespan="on",
                            loop=settings.event_loop)  # uvicorn's names for the same two
    signal.signal(signal.SIGTERM, _stopped_cleanly)
    settle_garbage_collector()
    quiet_server(config).run(sockets=[sock])


# --- The quiet server: a speed seam --------------------------------------------------------
# uvicorn's Server.main_loop sleeps 0.1 s per turn, to refresh the Date header once a second
# and to see whether `should_exit` was set: ten wake-ups a second in every idle process.
# QuietServer waits on an event that setting `should_exit` sets (uvicorn's signal handler
# sets it), and makes the Date header when a request reads it. It leans on uvicorn internals
# (`main_loop`, `should_exit`, `server_state.default_headers` read once per request), read
# for the releases below; on another release the stock server serves, and
# tests/test_private_api_contracts.py fails. Gain (`python -m bench --only idle`, same-run
# pairs, docs/performance.md): a consuming service idle 0.11-0.14 -> 0.003 % of a core; with
# the relay's idle back-off, the five services 1.2-1.8 -> under 0.1 %.

QUIET_SERVER_WRITTEN_FOR = ("0.54.",)


def quiet_server_supported() -> bool:
    return uvicorn.__version__.startswith(QUIET_SERVER_WRITTEN_FOR)


def quiet_server(config: uvicorn.Config) -> uvicorn.Server:
    """`QuietServer` on the uvicorn releases it was written for, else uvicorn's own."""
    if quiet_server_supported():
        return QuietServer(config)
    log.warning("uvicorn %s: the quiet server was written for %s; serving with uvicorn's own "
                "(it wakes ten times a second)", uvicorn.__version__,
                ", ".join(f"{v}x" for v in QUIET_SERVER_WRITTEN_FOR))
    return uvicorn.Server(config)


class QuietServer(uvicorn.Server):
    """uvicorn's server, asleep until it is told to exit: no timer while it is idle.

    What uvicorn's tick did once a second is done when needed instead: the Date header when
    a request reads the default headers (`DatedServerState`), and the exit when `should_exit`
    is set (a signal, or a caller such as apps/inprocess). The tick stays for the two options
    that need it (`limit_max_requests`, `callback_notify`), which the services do not set.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit_requested = False
        self._exit = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        super().__init__(config)
        self._ticks = config.limit_max_requests is not None or config.callback_notify is not None
        if not self._ticks:
            self.server_state = DatedServerState(config.date_header, config.encoded_headers)

    @property  # uvicorn's plain attribute, made to wake the loop when set
    def should_exit(self) -> bool:
        return self._exit_requested

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_requested = value
        loop = self._loop
        if value and loop is not None and not loop.is_closed():
            # Thread- and signal-safe: the handler may run while the loop waits in epoll.
            loop.call_soon_threadsafe(self._exit.set)

    async def main_loop(self) -> None:
        if self._ticks:
            await super().main_loop()
            return
        self._loop = asyncio.get_running_loop()
        try:
            if not self.should_exit:  # set before the loop was known: nothing would wake it
                await self._exit.wait()
        finally:
            self._loop = None


class DatedServerState(ServerState):
    """uvicorn's server state whose default headers carry a Date made when they are read
    (once per request), current to the second; uvicorn's tick refreshed it once a second."""

    def __init__(self, date_header: bool, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__()
        self._date_header = date_header
        self._second = -1
        self._dated: list[tuple[bytes, bytes]] = []
        self.default_headers = headers

    @property  # uvicorn's plain attribute
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        if not self._date_header:
            return self._headers
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._dated = [(b"date", formatdate(now, usegmt=True).encode()), *self._headers]
        return self._dated

    @default_headers.setter
    def default_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        # The other headers; the Date is made on reading (uvicorn's tick would set its own).
        self._headers = [header for header in headers if header[0] != b"date"]
        self._second = -1


# Allocations between young collections: a message makes a few thousand short-lived
# objects (spans, rows, frames), so the default 700 ran a collection several times each.
YOUNG_COLLECTION_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """Before serving: the objects made at start-up (modules, settings, metadata) live as
    long as the process, so freeze them out of the collector's scans, and collect the
    young generation less often. Reference counting still frees almost everything at once;
    only cycles wait for a collection (docs/performance.md)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def _stopped_cleanly(_signum: int, _frame: object) -> None:
    """The SIGTERM uvicorn re-raises after its graceful stop: the stop is done already."""


def _start_up_in_one_line(app: FastAPI) -> ASGIApp:
    """The lifespan, with a failed start-up told in one line and spans flushed at shutdown.

    A failed start-up (database unreachable, say) is logged by uvicorn from the message of
    `lifespan.startup.failed`; Starlette puts the whole traceback there. The last line says
    what went wrong; the traceback goes to DEBUG. Spans are exported once the lifespan has
    ended, not after `run()`: on SIGTERM uvicorn re-raises the signal when it is done, which
    ends the process before code after `run()` or an atexit hook gets to run.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_briefly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and message.get("message"):
                log.debug("start-up failed:\n%s", message["message"])
                last = message["message"].strip().splitlines()[-1]
                message = {**message, "message": f"start-up failed: {last}"}
            if message["type"] == "lifespan.shutdown.complete":
                telemetry.shutdown_tracing(SPAN_FLUSH_SECONDS)
            await send(message)

        await app(scope, receive, send_briefly)

    return wrapped
