"""Several consumed messages per inbox transaction; each message still decided on its own.

Why: most of a consumer's CPU went to the session and transaction around each event, not to
the event's few statements. Gain (docs/performance.md, "Several messages per inbox
transaction", "session 5"): saturation 87.1, 79.4 -> 119, 116 payments/s (x 1.4), the
consumers' CPU per order down about a third; the claims of a consumer with a step outside
the database grouped too, its CPU per order down another 20 %.

`InboxBatcher.process` is what the consumer calls for each message (SPEED_LAYER=on),
concurrently. It runs `Inbox.process`, the one path of every event, with its claim and its
record each joining a group commit (messaging/speed/group_commit.py): one transaction for
all that is waiting, in arrival order, an outcome per event (`Inbox.claim_batch`,
`Inbox.process_batch`). A group of one, or one that rolled back, is done alone by its
message's task (`Inbox.claim`, `Inbox.apply`), exactly as without batching, so errors raise
as they always did and the consumer settles each message as before. Nothing is acked before
the commit that holds its effect and inbox row: the consumer acks when `process` returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
from functools import partial

from contracts import Event
from messaging.inbox import Inbox, Outcome, OutOfOrder
from messaging.spec import Subscriptions
from messaging.speed.group_commit import GroupCommit


class _Claimed(enum.Enum):
    CLAIMED = "claimed"  # checked and claimed: its step and record come next


CLAIMED = _Claimed.CLAIMED

# How long an early event waits here for the event it waits for, when that one is being
# worked on in this process: longer than a mail's SMTP exchange usually takes, far shorter
# than the claim lease. Past it, the event is deferred through its wait queue as before.
CAUSE_WAIT_SECONDS = 5.0


class InboxBatcher:
    def __init__(self, inbox: Inbox, subscriptions: Subscriptions, *, max_batch: int = 32):
        self._inbox = inbox
        self._subscriptions = subscriptions
        self._max_batch = max_batch
        self._batches: GroupCommit[Event, Outcome] = GroupCommit(
            self._commit, max_group=max_batch, name="inbox-batcher")
        # The checks and claims of events with a step outside the database (the mails): one
        # transaction for all that are waiting, as for the records.
        self._claims: GroupCommit[Event, Outcome | _Claimed] = GroupCommit(
            self._claim_group, max_group=max_batch, name="inbox-claims")
        # Event ids being worked on here, each with a future set when that work has ended;
        # and the same futures by the event's place (order, stream, sequence).
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._places: dict[tuple[str, str, int], asyncio.Future[None]] = {}

    async def process(self, event: Event) -> Outcome:
        """What `Inbox.process(event, subscriptions)` does, in a shared transaction.

        A second delivery of an event still being worked on here (the broker connection
        dropped and came back, and the broker redelivered it) waits for the first to end:
        the first finishes its side effect (the mail) and commits, and the second then finds
        a duplicate, instead of doing the side effect again because a connection dropped.

        An event that is early because the event it waits for is being worked on here right
        now (an `OrderShipped` whose `OrderPaid` mail is still being sent) waits for that
        work to end and is decided again, instead of a round trip through a wait queue. If
        it is still early then (the other failed), OutOfOrder is raised as before.
        """
        key = str(event.event_id)
        while (earlier := self._in_flight.get(key)) is not None:
            await asyncio.wait([earlier])
        done = asyncio.get_running_loop().create_future()
        place = (str(event.order_id), event.stream, event.sequence)
        self._in_flight[key] = done
        self._places.setdefault(place, done)
        # What it may wait for that is in flight now, noted before its state is read: a
        # cause that commits while the read is on its way has left `_places` by the time
        # the event turns out early, and deciding again then finds it applied.
        causes = {cause: future for cause in _causes(event)
                  if (future := self._places.get(cause)) is not None}
        try:
            try:
                return await self._process(event)
            except OutOfOrder as early:
                awaited = None
                if early.awaited is not None:
                    awaited = self._places.get(early.awaited) or causes.get(early.awaited)
                if awaited is None:
                    raise
                await asyncio.wait([awaited], timeout=CAUSE_WAIT_SECONDS)
                return await self._process(event)
        finally:
            del self._in_flight[key]
            if self._places.get(place) is done:
                del self._places[place]
            done.set_result(None)

    async def _process(self, event: Event) -> Outcome:
        return await self._inbox.process(event, self._subscriptions,
                                         claim=self._claim, record=self._record)

    async def _claim(self, event: Event) -> Outcome | None:
        """`Inbox.claim`, in a group with the claims of other messages when they come
        together; alone when it was not claimed there (a group of one, a group rolled back,
        an event not to be applied now), which decides it exactly as without grouping."""
        decided = await self._claims.do(event, alone=partial(self._claim_alone, event))
        return None if decided is CLAIMED else decided

    async def _claim_alone(self, event: Event) -> Outcome | _Claimed:
        early = await self._inbox.claim(event, self._subscriptions)
        return CLAIMED if early is None else early

    async def _record(self, event: Event) -> Outcome:
        return await self._batches.do(
            event, alone=partial(self._inbox.apply, event, self._subscriptions))

    async def close(self) -> None:
        """Stop the worker. A batch cut short rolls back; its messages, not acked, are
        released with the channel. Call after the consumer has stopped taking messages."""
        await self._claims.close()
        await self._batches.close()

    async def _claim_group(self, events: list[Event],
                           contexts: list[contextvars.Context]) -> list[_Claimed | None]:
        claimed = await self._inbox.claim_batch(events, self._subscriptions)
        return [CLAIMED if ready else None for ready in claimed]  # None: decide it alone

    async def _commit(self, events: list[Event],
                      contexts: list[contextvars.Context]) -> list[Outcome]:
        return await self._inbox.process_batch(events, self._subscriptions, contexts=contexts)


def _causes(event: Event) -> list[tuple[str, str, int]]:
    """The places (order, stream, sequence) an event can wait for: its predecessor in its
    own stream and its causes (`after`) in others."""
    order = str(event.order_id)
    return [(order, event.stream, event.sequence - 1),
            *((order, stream, position) for stream, position in event.after)]
