"""Faults of one vhost's broker connections and queues, through the RabbitMQ management API:
close a service's connections by their name (as the broker's admin would in the management
UI), keep them away for a while with the vhost's connection limit, delete a queue. The
broker itself, and every other vhost on it, keeps running.

Every Mini EC connection names itself (`connection_name`): a consumer's consuming connection
is `<service>`, its publishing one `<service>-publish` (messaging/chassis/runtime.py).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import quote

import httpx

from devstack.throwaway import management

# The management API lists a new connection only after the broker's statistics interval
# (5 s by default): a reconnected service is found within this.
LISTED_WITHIN_SECONDS = 15.0


def _q(name: str) -> str:
    return quote(name, safe="")


def connections(vhost: str) -> dict[str, list[str]]:
    """connection_name -> the broker's names of the open connections of that name."""
    with management() as api:
        response = api.get(f"/api/vhosts/{_q(vhost)}/connections")
        response.raise_for_status()
        found: dict[str, list[str]] = {}
        for c in response.json():
            label = (c.get("client_properties") or {}).get("connection_name", "")
            found.setdefault(label, []).append(c["name"])
        return found


def wait_listed(vhost: str, connection_name: str, timeout: float = LISTED_WITHIN_SECONDS,
                exclude: Collection[str] = ()) -> list[str]:
    """The broker's names of the open connections called `connection_name`, waiting until
    there is at least one not in `exclude` (AssertionError after `timeout`). `exclude`: the
    ones closed a moment ago, which the list may still name (the statistics lag)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            listed = connections(vhost).get(connection_name, [])
        except httpx.TransportError:  # the broker (and its management API) is restarting
            listed = []
        names = [n for n in listed if n not in exclude]
        if names:
            return names
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection {connection_name!r} in {vhost} "
                                 f"within {timeout}s")
        time.sleep(0.2)


def close_connections(names: Collection[str], reason: str = "test fault") -> int:
    """Close the connections of these broker names (from `wait_listed`) at once; how many
    were still open."""
    closed = 0
    with management() as api:
        for name in names:
            response = api.delete(f"/api/connections/{_q(name)}", headers={"X-Reason": reason})
            if response.status_code != 404:  # already gone
                response.raise_for_status()
                closed += 1
    return closed


def close(vhost: str, connection_name: str, reason: str = "test fault",
          timeout: float = LISTED_WITHIN_SECONDS) -> list[str]:
    """Close every open connection called `connection_name`, waiting until there is one;
    the broker's names of those closed."""
    deadline = time.monotonic() + timeout
    gone: set[str] = set()
    while True:
        names = wait_listed(vhost, connection_name, max(0.0, deadline - time.monotonic()),
                            exclude=gone)
        try:
            if close_connections(names, reason):
                return names
        except httpx.TransportError:  # the broker is restarting: look again for new ones
            continue
        gone.update(names)  # listed, but closed already


def connection_count(vhost: str) -> int:
    return sum(len(v) for v in connections(vhost).values())


@contextmanager
def vhost_limit(vhost: str, limit: str, value: int) -> Iterator[None]:
    """A vhost limit while inside (`max-connections`, `max-queues`): what is open or
    declared stays, a new one over the limit is refused; lifted on the way out."""
    with management() as api:
        api.put(f"/api/vhost-limits/{_q(vhost)}/{limit}", json={"value": value}
                ).raise_for_status()
    try:
        yield
    finally:
        with management() as api:
            api.delete(f"/api/vhost-limits/{_q(vhost)}/{limit}")


def connection_limit(vhost: str, limit: int) -> AbstractContextManager[None]:
    """At most `limit` connections to `vhost` while inside (the open ones stay)."""
    return vhost_limit(vhost, "max-connections", limit)


def delete_queue(vhost: str, queue: str) -> None:
    """Delete a queue as an admin would in the management UI."""
    with management() as api:
        api.delete(f"/api/queues/{_q(vhost)}/{_q(queue)}").raise_for_status()


@contextmanager
def kept_away(vhost: str, connection_name: str) -> Iterator[None]:
    """Close the connections called `connection_name` and refuse their reconnects while
    inside (the vhost's limit set to what else is open); they come back after."""
    wait_listed(vhost, connection_name)
    others = connection_count(vhost) - len(connections(vhost)[connection_name])
    with connection_limit(vhost, others):
        close(vhost, connection_name)
        yield
