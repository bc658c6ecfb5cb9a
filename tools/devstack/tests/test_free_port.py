"""free_port: what every test, check and bench run starts its servers on."""

import os
import socket
from pathlib import Path

import pytest

from devstack import stack

pytestmark = pytest.mark.unit


def test_each_test_worker_and_a_plain_process_pick_from_slices_no_other_shares():
    slices = [stack.port_slice(f"gw{n}") for n in range(stack.PORT_SLICES - 1)]
    slices.append(stack.port_slice(None))
    ports = [set(s) for s in slices]
    assert all(not (a & b) for i, a in enumerate(ports) for b in ports[i + 1:])
    assert all(len(p) == len(stack.PORT_RANGE) // stack.PORT_SLICES for p in ports)


def test_the_ports_lie_below_the_range_outgoing_connections_draw_from():
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low, _high = map(int, ephemeral.split())
    assert stack.PORT_RANGE.stop <= low


def test_a_port_is_not_handed_out_twice_in_a_row_nor_while_something_listens_on_it():
    first = stack.free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        second = stack.free_port()
    assert second not in (first, first + 1)
    assert second in stack.port_slice(os.environ.get("PYTEST_XDIST_WORKER"))


def test_a_slice_with_every_port_taken_is_an_error_that_names_it(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # a plain process's slice
        monkeypatch.setattr(stack, "PORT_SLICES", 1)
        monkeypatch.setattr(stack, "PORT_RANGE", range(port, port + 1))
        with pytest.raises(RuntimeError, match=f"no free port in {port}-{port}"):
            stack.free_port()
