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
    other tests are using) keeps running.
    """

    def __init__(self) -> None:
        self.port = free_port()
        host, _, port = AMQP_HOST.partition(":")
        self._target = (host, int(port or 5672))
        self._server: socket.socket | None = None
        self._closed = threading.Event()

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
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
