"""The fault helpers outlast a broker restart: while its management API refuses
connections, a wait for a connection goes on until its deadline instead of dying (the chaos
check's connection drops run while the broker restarts)."""

from __future__ import annotations

import pytest

from devstack import broker_faults, throwaway
from devstack.stack import free_port

pytestmark = pytest.mark.integration  # loopback only: a port nothing listens on


def test_a_management_api_that_refuses_connections_counts_as_none_listed(monkeypatch):
    monkeypatch.setattr(throwaway, "MANAGEMENT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(AssertionError, match="no connection 'mailer'"):
        broker_faults.wait_listed("some-vhost", "mailer", timeout=0.5)
