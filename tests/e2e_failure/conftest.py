"""Helpers of the cross-process failure tests."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from devstack.stack import free_port
from devstack.throwaway import AMQP_HOST


class BrokerGate:
    """A TCP port that refuses connections until `open()`, then forwards them to RabbitMQ.

    Lets one process see the broker as down and then back, while the shared broker (which
    other tests are using) keeps running. `freeze()` makes the broker stop answering without
    closing anything (a broker whose quorum is lost, a network that drops everything);
    `sever()` then closes every connection it forwarded, so the broker requeues their
    unacked messages.
    """

    def __init__(self) -> None:
        self.port = free_port()
        host, _, port = AMQP_HOST.partition(":")
        self._target = (host, int(port or 5672))
        self._server: socket.socket | None = None
        self._closed = threading.Event()
        # Per direction: set while bytes flow; a pipe that reads while cleared holds them.
        self._flowing = {"to_broker": threading.Event(), "to_client": threading.Event()}
        for direction in self._flowing.values():
            direction.set()
        self._sockets: list[socket.socket] = []

    def freeze(self, *directions: str) -> None:
        """Stop forwarding `directions` (default: both); connections stay open."""
        for direction in directions or tuple(self._flowing):
            self._flowing[direction].clear()

    def sever(self) -> None:
        """Close every forwarded connection (the bytes held by a freeze are dropped); new
        connections flow again."""
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._sockets.clear()
        for direction in self._flowing.values():
            direction.set()

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
        self.sever()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for a, b, direction in ((client, upstream, "to_broker"),
                                    (upstream, client, "to_client")):
                threading.Thread(target=self._pipe, args=(a, b, self._flowing[direction]),
                                 daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, flowing: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.fixture
def broker_gate():
    gate = BrokerGate()
    yield gate
    gate.close()
