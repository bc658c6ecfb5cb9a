"""The speed layer over a use case's transactions (messaging/transactions.py): the same
`run(work)`, with the work shared and the outbox rows handed over. `SPEED_LAYER=off` leaves
the plain `Transactions`: what these add is speed, never a guarantee.

    GroupedTransactions(HandingOff(sessions, relay))   a producer, SPEED_LAYER=on
    Transactions(sessions, wake=relay.notify)          a producer, SPEED_LAYER=off
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from messaging.outbox_store import OutboxHandOff
from messaging.speed.group_commit import GroupCommit
from messaging.transactions import (
    EventsCommitted,
    Refusal,
    Transaction,
    Transactions,
    UnitOfWork,
    Work,
)

T = TypeVar("T")

# Works per shared transaction, at most: enough for every concurrent request of a busy
# instance, small enough that one group's statements hold the connection only briefly.
MAX_GROUP = 64


class HandingOff(Transactions):
    """Why: the relay would read back every row a use case just wrote, to publish it.
    Instead the committed rows go to it in memory (`reserve` before the commit, so its poll
    leaves them alone; `release` after, saying whether it committed). Gain, with the group
    commit: the producer's CPU per request 7.8 -> 3.9 ms (docs/performance.md, "What
    each change gained"). A crash between commit and hand-off leaves an unsent row,
    which the relay's next poll publishes."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], hand_off: OutboxHandOff,
                 *, events_committed: EventsCommitted | None = None):
        super().__init__(sessions, events_committed=events_committed)  # woken by `release`
        self._hand_off = hand_off

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Transaction]:
        """The rows staged in the transaction go to the relay if it commits; withdrawn if it
        raises (rolled back, or a commit whose outcome is unknown: the poll decides)."""
        staged: Sequence[Any] = ()
        try:
            async with super().begin() as tx:
                staged = tx.rows
                yield tx
                self._hand_off.reserve(staged)
        except BaseException:
            self._hand_off.release(staged, committed=False)
            raise
        self._hand_off.release(staged, committed=True)


@dataclass
class _Done(Generic[T]):
    """A work's end in a group's transaction: its result or its refusal, and its view."""

    tx: Transaction
    result: T | None = None
    refused: Refusal | None = None


class GroupedTransactions:
    """Why: most of a use case's database CPU is the session and transaction around its few
    statements. Works that arrive while a group commits share the next transaction (the
    group commit of messaging/speed/group_commit.py, as the inbox batcher's), each run in its
    caller's context (its trace, its correlation id) and answered only after the commit that
    holds it. Gain: see `HandingOff` (the two were measured together).

    A work that refuses (raises a `Refusal`, having written nothing) gets its refusal; the
    group commits the others. Any other failure rolls the group back and each work runs
    alone, exactly as without grouping. A work arriving alone is a group of one."""

    def __init__(self, inner: Transactions, *, max_group: int = MAX_GROUP,
                 name: str = "group-commit"):
        self.sessions = inner.sessions
        self._inner = inner
        self._group: GroupCommit[Work[Any], _Done[Any]] = GroupCommit(
            self._run_group, max_group=max_group, name=name)

    async def run(self, work: Work[T]) -> T:
        done = await self._group.do(work, alone=partial(self._alone, work))
        await self._inner.committed(done.tx)
        if done.refused is not None:
            raise done.refused
        return done.result  # type: ignore[return-value] # a result unless refused

    async def close(self) -> None:
        """Stop the group worker. A group cut short rolls back; its callers are cancelled."""
        await self._group.close()

    async def _alone(self, work: Work[T]) -> _Done[T]:
        async with self._inner.begin() as tx:
            return await _attempt(work, tx)

    async def _run_group(self, works: list[Work[Any]],
                         contexts: list[contextvars.Context]) -> list[_Done[Any]]:
        async with self._inner.begin() as tx:
            return [await asyncio.create_task(_attempt(work, tx.another()), context=context)
                    for work, context in zip(works, contexts, strict=True)]


async def _attempt(work: Work[T], tx: Transaction) -> _Done[T]:
    try:
        return _Done(tx, result=await work(tx))
    except Refusal as refused:
        return _Done(tx, refused=refused)


def unit_of_work(sessions: async_sessionmaker[AsyncSession], *, speed: bool,
                 relay: OutboxHandOff | None = None, wake: Callable[[], None] | None = None,
                 events_committed: EventsCommitted | None = None) -> UnitOfWork:
    """A use case's transactions: the plain ones (SPEED_LAYER=off: `wake`, the relay's
    `notify`, after each commit), or grouped with the rows handed to `relay` in-process."""
    if not speed:
        return Transactions(sessions, events_committed=events_committed, wake=wake)
    inner = (Transactions(sessions, events_committed=events_committed) if relay is None
             else HandingOff(sessions, relay, events_committed=events_committed))
    return GroupedTransactions(inner)
