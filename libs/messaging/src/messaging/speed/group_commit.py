"""Group commit: work that arrives while a transaction commits shares the next one.

The one mechanism behind the speed layer's wrappers: the inbox batcher (several consumed
messages per inbox transaction, messaging/speed/inbox_batching.py) and a producer's use
cases (several concurrent requests per transaction, messaging/speed/transactions.py). Each
caller `do`es its item and waits; one worker task takes everything waiting (up to
`max_group`) and hands it to `commit`, in arrival order, each item with the context (trace
span, correlation id) of the task that submitted it:

    the caller's task                   the worker
    -----------------                   ----------
    submit(item), waits  ------------>  commit(items, contexts) -> a result per item
    the result  <---------------------  committed
    None  <---------------------------  a group of one, or `commit` raised (rolled back):
      -> the caller does its item alone,  nothing of the group is committed
         exactly as without grouping

No timer: the worker starts a group as soon as it is free, so when work is rare each item is
a group of one (done alone by its own task, latency as before); under load, what arrives
while one group commits forms the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from messaging.observability import telemetry

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# Commits a group (two or more items) in one transaction: a result per item, in order
# (None: that item is not done there; its caller does it alone).
CommitGroup = Callable[[list[Item], list[contextvars.Context]],
                       Awaitable[Sequence[Result | None]]]


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    context: contextvars.Context  # the submitting task's: its span and correlation id
    done: asyncio.Future[Result | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit(Generic[Item, Result]):
    def __init__(self, commit: CommitGroup[Item, Result], *, max_group: int, name: str):
        self._commit_group = commit
        self._max_group = max_group
        self._name = name
        self._waiting: list[_Waiting[Item, Result]] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def do(self, item: Item, alone: Callable[[], Awaitable[Result]]) -> Result:
        """The item's result from a committed group; else `alone()` (a group of one, a group
        rolled back, grouping off), which does it exactly as without grouping."""
        result = await self.submit(item) if self._max_group > 1 else None
        return result if result is not None else await alone()

    async def submit(self, item: Item) -> Result | None:
        """The item's result from a committed group, or None: do it alone."""
        waiting: _Waiting[Item, Result] = _Waiting(item, contextvars.copy_context())
        self._waiting.append(waiting)
        self._wake.set()
        if self._worker is None or self._worker.done():
            # A context of its own: the worker belongs to no caller and no trace.
            self._worker = asyncio.create_task(
                self._run(), name=self._name, context=contextvars.Context()
            )
        return await waiting.done

    async def close(self) -> None:
        """Stop the worker. A group cut short rolls back; its callers are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for waiting in self._waiting:
            waiting.done.cancel()
        self._waiting.clear()

    async def _run(self) -> None:
        with telemetry.untraced():  # the group's own BEGIN and COMMIT (each item's traced)
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    group = self._waiting[: self._max_group]
                    del self._waiting[: self._max_group]
                    # A caller cancelled meanwhile has gone: its item is not done for it.
                    await self._commit([w for w in group if not w.done.done()])

    async def _commit(self, group: list[_Waiting[Item, Result]]) -> None:
        results: Sequence[Result | None] = [None] * len(group)
        if len(group) > 1:  # a group of one is done alone, by its own task
            try:
                results = await self._commit_group([w.item for w in group],
                                                   [w.context for w in group])
            except Exception as exc:
                log.info("%s: group of %d rolled back (%s: %s); each is done on its own",
                         self._name, len(group), type(exc).__name__, exc)
            except asyncio.CancelledError:  # close(): rolled back; the callers end with it
                for waiting in group:
                    waiting.done.cancel()
                raise
        for waiting, result in zip(group, results, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(result)
