"""Several consumed messages per inbox transaction; each message still decided on its own.

Most of a consumer's CPU goes to the session and transaction around each event, not to the
event's few statements (docs/performance.md). `InboxBatcher.process` is what the consumer
calls for each message, concurrently (one task per delivery, up to the prefetch). Instead of
a transaction of its own, each event joins a batch:

    the message's task                      the batcher's worker
    ------------------                      --------------------
    prepare: dedupe check + `before` step   takes everything waiting (up to `max_batch`),
      (the mail), per message, concurrent     one inbox transaction for all of it, in
    joins the batch, waits  ---------------->  arrival order -> an outcome per event
    outcome: the consumer acks  <-----------  committed
    None: the batch rolled back  <----------  anything raised: rolled back, nothing committed
      -> Inbox.apply, alone, exactly as without batching (errors raise as they always did)

No timer: the worker starts a batch as soon as it is free, so when messages are rare each
is a batch of one (applied alone, as before) and latency stays where it was; under load the
messages that arrive while one batch commits form the next. Nothing is acked before the
commit that holds its effect and inbox row, because the consumer acks only when `process`
returns. The consumer classifies a failure (out of order, permanent, transient) exactly as
before, because every failure comes from the message's own `Inbox.apply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts import Event
from messaging import telemetry
from messaging.inbox import Inbox, Outcome, OutOfOrder, record_despite_cancellation
from messaging.spec import Subscriptions

log = logging.getLogger(__name__)

# How long an early event waits here for the event it waits for, when that one is being
# worked on in this process: longer than a mail's SMTP exchange usually takes, far shorter
# than the claim lease. Past it, the event is deferred through its wait queue as before.
CAUSE_WAIT_SECONDS = 5.0


@dataclass
class _Waiting:
    event: Event
    # The message task's context: its CONSUMER span and correlation id, for the event's work.
    context: contextvars.Context
    done: asyncio.Future[Outcome | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class InboxBatcher:
    def __init__(self, inbox: Inbox, subscriptions: Subscriptions, *, max_batch: int = 32):
        self._inbox = inbox
        self._subscriptions = subscriptions
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
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
        try:
            try:
                return await self._process(event)
            except OutOfOrder as early:
                awaited = self._places.get(early.awaited) if early.awaited else None
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
        early = await self._inbox.prepare(event, self._subscriptions)
        if early is not None:
            return early
        if self._subscriptions.before_for(event) is not None:  # its mail went out
            return await record_despite_cancellation(self._record(event))
        return await self._record(event)

    async def _record(self, event: Event) -> Outcome:
        if self._max_batch > 1:
            outcome = await self._in_batch(event)
            if outcome is not None:
                return outcome
        return await self._inbox.apply(event, self._subscriptions)

    async def close(self) -> None:
        """Stop the worker. A batch cut short rolls back; its messages, not acked, are
        released with the channel. Call after the consumer has stopped taking messages."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for waiting in self._waiting:
            waiting.done.cancel()
        self._waiting.clear()

    async def _in_batch(self, event: Event) -> Outcome | None:
        """The event's outcome from a committed batch, or None: apply it alone."""
        waiting = _Waiting(event, contextvars.copy_context())
        self._waiting.append(waiting)
        self._wake.set()
        if self._worker is None or self._worker.done():
            # A context of its own: the worker belongs to no message and no trace.
            self._worker = asyncio.create_task(
                self._run(), name="inbox-batcher", context=contextvars.Context()
            )
        return await waiting.done

    async def _run(self) -> None:
        with telemetry.untraced():  # the transaction's own statements (the events' run traced)
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._waiting:
                    batch = self._waiting[: self._max_batch]
                    del self._waiting[: self._max_batch]
                    await self._commit(batch)

    async def _commit(self, batch: list[_Waiting]) -> None:
        outcomes: Sequence[Outcome | None] = [None] * len(batch)
        if len(batch) > 1:  # a batch of one is applied alone, by its own task
            try:
                outcomes = await self._inbox.process_batch(
                    [w.event for w in batch], self._subscriptions,
                    contexts=[w.context for w in batch],
                )
            except Exception as exc:
                log.info("batch of %d rolled back (%s: %s); applying each on its own",
                         len(batch), type(exc).__name__, exc)
            except asyncio.CancelledError:  # close(): rolled back; the messages are released
                for waiting in batch:
                    waiting.done.cancel()
                raise
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if not waiting.done.done():
                waiting.done.set_result(outcome)
