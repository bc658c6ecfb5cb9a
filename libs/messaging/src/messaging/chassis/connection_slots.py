"""Who gets one of the HTTP server's connection slots: decisions only, no I/O.

A connection is *idle* while no request is in progress on it: opened and silent, or kept
alive between requests. Idle connections are the first to go, so a client holding many
open does not lock others out:

- a client address at its share of the slots: its own oldest idle connection makes room,
  else its new connection is refused;
- all slots taken: the oldest idle connection (whoever's) makes room, else refused;
- a refused connection is held only to answer `503` with `Retry-After`; at most `overflow`
  of them at once, past that one is closed unanswered (the process's file descriptors).

`messaging.chassis.server` acts on the decisions; docs/limits.md says what they mean for a client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

C = TypeVar("C", bound=Hashable)

OVER_THE_CAP: Final = "over the cap"
OVER_THE_SHARE: Final = "over its client's share"
Reason = Literal["over the cap", "over its client's share"]

# From this share of the slots taken on, a connection that turns idle is kept alive only
# briefly (messaging.chassis.server), so that idle ones are gone before the cap is reached.
PRESSURE_SHARE = 0.75


@dataclass(frozen=True)
class Serve(Generic[C]):
    """Take a slot; `evict`, if any, is an idle connection to close to make room for it."""

    evict: C | None = None


@dataclass(frozen=True)
class Refuse:
    """Answer `503` with `Retry-After`, then close."""

    reason: Reason


@dataclass(frozen=True)
class Drop:
    """Close at once, unanswered: too many are already waiting for their 503."""

    reason: Reason


class ConnectionSlots(Generic[C]):
    """The open connections of one server, by client address and by how long idle."""

    def __init__(self, capacity: int, client_share: float):
        self.capacity = capacity
        self.per_client = max(1, int(capacity * client_share))
        self.overflow = max(8, capacity // 8)
        self._client: dict[C, str] = {}
        self._count: Counter[str] = Counter()
        # Insertion-ordered: the first key is the longest idle.
        self._idle: dict[C, None] = {}
        self._idle_of: dict[str, dict[C, None]] = {}
        self._refused: set[C] = set()

    @property
    def open(self) -> int:
        """Connections holding a slot (not counting those refused)."""
        return len(self._client)

    @property
    def under_pressure(self) -> bool:
        return len(self._client) >= self.capacity * PRESSURE_SHARE

    def admit(self, conn: C, client: str) -> Serve[C] | Refuse | Drop:
        """A new connection from `client`: serve it (maybe closing an idle one) or refuse it."""
        if self._count[client] >= self.per_client:
            return self._make_room(conn, client, self._oldest_idle(client), OVER_THE_SHARE)
        if len(self._client) >= self.capacity:
            return self._make_room(conn, client, self._oldest_idle(None), OVER_THE_CAP)
        self._add(conn, client)
        return Serve()

    def busy(self, conn: C) -> None:
        """A request began on `conn`."""
        client = self._client.get(conn)
        if client is not None:
            self._idle.pop(conn, None)
            self._idle_of[client].pop(conn, None)

    def idle(self, conn: C) -> None:
        """`conn` is waiting for its next request: the newest idle one."""
        client = self._client.get(conn)
        if client is not None:
            self.busy(conn)
            self._idle[conn] = None
            self._idle_of[client][conn] = None

    def leave(self, conn: C) -> None:
        """`conn` is closed (called again for one already evicted: nothing happens)."""
        self._refused.discard(conn)
        client = self._client.pop(conn, None)
        if client is None:
            return
        self._idle.pop(conn, None)
        self._idle_of[client].pop(conn, None)
        self._count[client] -= 1
        if not self._count[client]:
            del self._count[client]
            del self._idle_of[client]

    def _make_room(self, conn: C, client: str, idle: C | None,
                   reason: Reason) -> Serve[C] | Refuse | Drop:
        if idle is None:
            if len(self._refused) >= self.overflow:
                return Drop(reason)
            self._refused.add(conn)
            return Refuse(reason)
        self.leave(idle)
        self._add(conn, client)
        return Serve(idle)

    def _oldest_idle(self, client: str | None) -> C | None:
        idle = self._idle if client is None else self._idle_of.get(client, {})
        return next(iter(idle), None)

    def _add(self, conn: C, client: str) -> None:
        self._client[conn] = client
        self._count[client] += 1
        self._idle_of.setdefault(client, {})[conn] = None
        self._idle[conn] = None  # silent until its first bytes
