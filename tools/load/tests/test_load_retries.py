"""A payment answered 503 is tried again, as a real client would, and goes through: payment
has no connection slot left for the load generator's address (the test holds them, mid-request)
until the test lets them go."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid

import pytest

from conftest import start_stack
from devstack.wait import eventually

pytestmark = pytest.mark.e2e


def test_a_payment_answered_503_is_tried_again_and_goes_through(tmp_path, amqp_url, smtp):
    # Eight slots, a quarter of them (two) per client address; headers may take a minute,
    # so the test's two half-sent requests keep both of this address's slots busy.
    stack = start_stack(tmp_path, amqp_url, smtp.port, HTTP_MAX_CONNECTIONS="8",
                        HTTP_CLIENT_CONNECTION_SHARE="0.25", HTTP_HEADER_TIMEOUT_SECONDS="60")
    held: list[socket.socket] = []
    try:
        payment = stack.services["payment"]
        for _ in range(2):
            held.append(socket.create_connection(("127.0.0.1", payment.port), timeout=10))
            held[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: payment\r\n")  # no end
        run_id = f"e2e-{uuid.uuid4().hex[:8]}"
        load = subprocess.Popen(
            [sys.executable, "-m", "load", "--users", "1", "--rate", "1", "--duration", "2s",
             "--attempts", "30", "--run-id", run_id, "--settle-seconds", "60",
             "--host", payment.url, "--points-url", stack.url("points"),
             "--mailer-url", stack.url("mailer"), "--audit-url", stack.url("audit"),
             "--shipping-url", stack.url("shipping")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            # Payment refused the shopper's first try (logged at once); then make room.
            eventually(lambda: "answered 503" in payment.log_path.read_text(), timeout=60,
                       message="payment answered the load generator 503")
            for connection in held:
                connection.close()
            output, _ = load.communicate(timeout=120)
        finally:
            load.kill()
    finally:
        for connection in held:
            connection.close()
        stack.stop()

    assert load.returncode == 0, output
    summary = output[output.index(f"load run {run_id}"):]
    retried = int(re.search(r"failures 0, retried (\d+)", summary).group(1))
    assert retried >= 1, summary
    assert re.search(r"POST\s+/payments \(retried 503\)\s+" + str(retried) + r"\s", output), output
    accepted = int(re.search(r"payments   (\d+) accepted", summary).group(1))
    assert accepted >= 1 and f"effects    all present, once, for all {accepted}" in summary
