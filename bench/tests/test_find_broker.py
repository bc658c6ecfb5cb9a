"""The bench charges the broker's CPU to the process that listens on its AMQP port, whatever
other Erlang nodes (a cluster test's, say) run on the machine."""

import subprocess
import sys

import psutil
import pytest

from bench.harness import find_broker_pid, wait_until
from devstack.stack import free_port

pytestmark = pytest.mark.integration

LISTENER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
time.sleep(60)
"""


def test_the_pid_is_the_process_listening_on_the_port_not_the_first_beam():
    port = free_port()
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE,
                                text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        assert find_broker_pid(port) == listener.pid
    finally:
        listener.kill()
        listener.wait()
    wait_until(lambda: find_broker_pid(port) is None, timeout=10, what="the listener gone")


def test_the_local_broker_is_found_on_5672():
    pid = find_broker_pid(5672)
    assert pid is not None and psutil.Process(pid).name().startswith("beam")
