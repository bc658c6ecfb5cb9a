"""Several events per inbox transaction (messaging/speed/inbox_batching.py), on SQLite and
PostgreSQL.

A batch applies its events in order in one transaction with the same rules as one at a time;
if anything in it fails, nothing of it is committed and each event is applied on its own, so
the failing one raises exactly what it raises without batching and the others still commit.
"""

import asyncio
import re
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select, update

from contracts import utcnow
from devstack import events
from messaging import inbox
from messaging.chassis import db
from messaging.inbox import (
    Conflict,
    Inbox,
    InProgress,
    Outcome,
    OutOfOrder,
    order_progress_table,
)
from messaging.observability import correlation
from messaging.spec import every
from messaging.speed.inbox_batching import InboxBatcher

pytestmark = pytest.mark.integration

effects_metadata = MetaData()
effects = Table(
    "effects", effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("correlation_id", String(64)),
)


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(effects_metadata, inbox.metadata)


@pytest.fixture
def box(sessions) -> Inbox:
    return Inbox(sessions)


class Recorder:
    """A handler that writes an effect row and notes the session and context it ran in."""

    def __init__(self, fail_for=()):
        self.fail_for = {str(e.event_id) for e in fail_for}
        self.sessions: list = []  # kept alive, so their ids stay distinct
        self.spans: dict[str, int] = {}  # event id -> span id current in the handler

    async def __call__(self, event, session) -> None:
        self.sessions.append(session)
        self.spans[str(event.event_id)] = trace.get_current_span().get_span_context().span_id
        if str(event.event_id) in self.fail_for:
            raise RuntimeError(f"handler failed for {event.event_id}")
        await session.execute(insert(effects).values(
            event_id=str(event.event_id), correlation_id=correlation.get()))


async def effects_in_order(sessions) -> list[tuple[str, str | None]]:
    async with sessions() as session:
        rows = await session.execute(
            select(effects.c.event_id, effects.c.correlation_id).order_by(effects.c.id))
        return [(event_id, cid) for event_id, cid in rows]


async def progress(sessions, order_id) -> int | None:
    async with sessions() as session:
        return await session.scalar(select(order_progress_table.c.last_sequence).where(
            order_progress_table.c.order_id == str(order_id)))


async def process_concurrently(batcher, evts, cids=None, spans=None):
    """Like the consumer: one task per message, each with its own correlation id (and span)."""

    async def one(event, cid):
        correlation.current.set(cid)
        if spans is None:
            return await batcher.process(event)
        with spans.start_as_current_span(f"consume {cid}"):
            return await batcher.process(event)

    cids = cids or [f"cid-{i}" for i in range(len(evts))]
    return await asyncio.gather(*(one(e, c) for e, c in zip(evts, cids, strict=True)),
                                return_exceptions=True)


async def test_a_batch_skips_a_duplicate_and_applies_the_rest_in_one_transaction(box, sessions):
    seen, new = events.order_paid(), events.order_paid()
    handler = Recorder()
    assert await box.process(seen, every(handler)) is Outcome.APPLIED

    outcomes = await box.process_batch([seen, new, new], every(handler))

    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.DUPLICATE]
    assert [e for e, _ in await effects_in_order(sessions)] == [str(seen.event_id),
                                                                  str(new.event_id)]


async def test_two_events_of_one_order_in_one_batch_see_each_others_progress(box, sessions):
    paid = events.order_paid()
    refunded = events.order_refunded(paid)

    outcomes = await box.process_batch([paid, refunded], every(Recorder()))

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert await progress(sessions, paid.order_id) == 2


async def test_a_failing_event_rolls_the_whole_batch_back(box, sessions):
    good, bad = events.order_paid(), events.order_paid()

    with pytest.raises(RuntimeError):
        await box.process_batch([good, bad], every(Recorder(fail_for=[bad])))

    assert await effects_in_order(sessions) == []
    assert await progress(sessions, good.order_id) is None


async def test_concurrent_messages_share_one_transaction_each_in_its_own_context(box, sessions):
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    other = events.order_paid()
    handler = Recorder()
    batcher = InboxBatcher(box, every(handler), max_batch=32)
    tracer = TracerProvider().get_tracer("test")  # a local provider: real, distinct span ids

    outcomes = await process_concurrently(batcher, [paid, refunded, other], spans=tracer)
    await batcher.close()

    assert outcomes == [Outcome.APPLIED] * 3
    assert len(set(map(id, handler.sessions))) == 1, "expected one batch, one session"
    # Each handler call ran under its own message's span (audit stores that trace id).
    assert len(set(handler.spans.values())) == 3 and 0 not in handler.spans.values()
    # In delivery order, each handler call under its own message's correlation id.
    assert await effects_in_order(sessions) == [
        (str(paid.event_id), "cid-0"), (str(refunded.event_id), "cid-1"),
        (str(other.event_id), "cid-2")]


async def test_a_failing_message_falls_back_to_one_by_one_and_fails_alone(box, sessions):
    good1, bad, good2 = events.order_paid(), events.order_paid(), events.order_paid()
    early = events.order_refunded(events.order_paid())  # its predecessor never came
    handler = Recorder(fail_for=[bad])
    batcher = InboxBatcher(box, every(handler), max_batch=32)

    outcomes = await process_concurrently(batcher, [good1, bad, early, good2])
    await batcher.close()

    assert outcomes[0] is Outcome.APPLIED and outcomes[3] is Outcome.APPLIED
    # The errors the consumer classifies, exactly as without batching.
    assert isinstance(outcomes[1], RuntimeError) and "handler failed" in str(outcomes[1])
    assert isinstance(outcomes[2], OutOfOrder)
    assert sorted(e for e, _ in await effects_in_order(sessions)) == sorted(
        [str(good1.event_id), str(good2.event_id)])
    # The batch ran good1 and bad in one session and stopped there (rolled back); then each
    # message on its own: good1, bad, good2 (early stops at its sequence check).
    assert len(handler.sessions) == 2 + 3
    assert len(set(map(id, handler.sessions))) == 1 + 3


async def test_max_batch_caps_a_transaction(box, sessions):
    evts = [events.order_paid() for _ in range(5)]
    handler = Recorder()
    batcher = InboxBatcher(box, every(handler), max_batch=2)

    outcomes = await process_concurrently(batcher, evts)
    await batcher.close()

    assert outcomes == [Outcome.APPLIED] * 5
    # 2 + 2 share a session each; the fifth is a batch of one, applied alone.
    assert len(set(map(id, handler.sessions))) == 3


async def test_before_runs_per_message_for_new_events_only_and_before_the_commit(box, sessions):
    seen, new1, new2 = events.order_paid(), events.order_paid(), events.order_paid()
    handler = Recorder()
    assert await box.process(seen, every(handler)) is Outcome.APPLIED
    sent: list[tuple[str, bool]] = []

    async def send(event):  # the mailer's SMTP step: must find nothing recorded yet
        sent.append((str(event.event_id), await box.seen(str(event.event_id))))

    batcher = InboxBatcher(box, every(handler, before=send), max_batch=32)
    outcomes = await process_concurrently(batcher, [seen, new1, new2])
    await batcher.close()

    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.APPLIED]
    assert sorted(sent) == sorted([(str(new1.event_id), False), (str(new2.event_id), False)])
    assert await box.seen(str(new1.event_id)) and await box.seen(str(new2.event_id))


class SentMails:
    """A `before` step that only notes the ids of the events it was run for."""

    def __init__(self):
        self.ids: list[str] = []

    async def __call__(self, event) -> None:
        self.ids.append(str(event.event_id))


class ClaimCountingInbox(Inbox):
    """Notes each group of claims (one transaction) and each claim decided alone."""

    def __init__(self, sessions):
        super().__init__(sessions)
        self.groups: list[list[str]] = []
        self.alone: list[str] = []

    async def claim_batch(self, events, subscriptions):
        self.groups.append([str(e.event_id) for e in events])
        return await super().claim_batch(events, subscriptions)

    async def claim(self, event, subscriptions):
        self.alone.append(str(event.event_id))
        return await super().claim(event, subscriptions)


async def test_messages_with_a_step_outside_the_database_are_checked_and_claimed_together(
    sessions
):
    evts = [events.order_paid() for _ in range(3)]
    send = SentMails()

    box = ClaimCountingInbox(sessions)
    batcher = InboxBatcher(box, every(Recorder(), before=send), max_batch=32)
    outcomes = await process_concurrently(batcher, evts)
    await batcher.close()

    assert outcomes == [Outcome.APPLIED] * 3
    assert box.groups == [[str(e.event_id) for e in evts]], "one claim transaction"
    assert box.alone == []
    assert sorted(send.ids) == sorted(str(e.event_id) for e in evts)


async def test_an_event_of_a_claim_group_not_to_be_applied_now_is_decided_alone(sessions):
    seen, new1, new2 = events.order_paid(), events.order_paid(), events.order_paid()
    early = events.order_refunded(events.order_paid())  # its predecessor never came
    send = SentMails()

    box = ClaimCountingInbox(sessions)
    assert await box.process(seen, every(Recorder(), before=send)) is Outcome.APPLIED
    box.alone.clear()
    send.ids.clear()
    batcher = InboxBatcher(box, every(Recorder(), before=send), max_batch=32)
    outcomes = await process_concurrently(batcher, [seen, early, new1, new2])
    await batcher.close()

    assert outcomes[0] is Outcome.DUPLICATE and isinstance(outcomes[1], OutOfOrder)
    assert outcomes[2:] == [Outcome.APPLIED, Outcome.APPLIED]
    assert len(box.groups) == 1 and len(box.groups[0]) == 4
    # Only the two not claimed in the group were decided again, each alone; no mail for them.
    assert sorted(box.alone) == sorted([str(seen.event_id), str(early.event_id)])
    assert sorted(send.ids) == sorted([str(new1.event_id), str(new2.event_id)])


async def test_a_claim_group_with_an_event_another_copy_holds_rolls_back_and_each_claims_alone(
    sessions
):
    held, new1, new2 = events.order_paid(), events.order_paid(), events.order_paid()
    async with sessions() as session, session.begin():  # another instance is sending it now
        await session.execute(insert(inbox.claims_table).values(
            event_id=str(held.event_id), claimed_at=utcnow()))
    send = SentMails()

    box = ClaimCountingInbox(sessions)
    batcher = InboxBatcher(box, every(Recorder(), before=send), max_batch=32)
    outcomes = await process_concurrently(batcher, [held, new1, new2])
    await batcher.close()

    assert isinstance(outcomes[0], InProgress)
    assert outcomes[1:] == [Outcome.APPLIED, Outcome.APPLIED]
    assert len(box.groups) == 1
    assert sorted(box.alone) == sorted(str(e.event_id) for e in (held, new1, new2))
    assert sorted(send.ids) == sorted([str(new1.event_id), str(new2.event_id)])


async def test_batch_size_one_applies_each_alone(box, sessions):
    evts = [events.order_paid() for _ in range(3)]
    handler = Recorder()
    batcher = InboxBatcher(box, every(handler), max_batch=1)

    assert await process_concurrently(batcher, evts) == [Outcome.APPLIED] * 3
    await batcher.close()
    assert len(handler.sessions) == 3


async def test_a_redelivery_of_an_event_still_in_flight_waits_and_is_a_duplicate_not_a_resend(
    box, sessions
):
    """The broker connection dropped mid-work and the broker redelivered the message: the
    second delivery waits for the first to finish its side effect (a mail) and commit, then
    is a duplicate; the side effect happens once."""
    paid = events.order_paid()
    sent, release = [], asyncio.Event()

    async def send_mail(event) -> None:
        sent.append(event.event_id)
        await release.wait()  # the SMTP server is slow: still in flight when the link drops

    batcher = InboxBatcher(box, every(Recorder(), before=send_mail))
    first = asyncio.create_task(batcher.process(paid))
    while not sent:
        await asyncio.sleep(0.01)
    redelivered = asyncio.create_task(batcher.process(paid))
    await asyncio.sleep(0.1)
    assert not redelivered.done()  # waits for the first, does not send
    release.set()
    assert await first == Outcome.APPLIED
    assert await redelivered == Outcome.DUPLICATE
    assert sent == [paid.event_id]
    assert [e for e, _ in await effects_in_order(sessions)] == [str(paid.event_id)]
    await batcher.close()


async def test_a_message_cancelled_after_its_side_effect_still_commits_and_its_copy_sends_nothing(
    box, sessions
):
    """The channel closed (aio-pika cancels the message's task) after the mail went out and
    before the commit: the record still commits, so the redelivery is a duplicate."""
    paid = events.order_paid()
    sent, entered, release = [], asyncio.Event(), asyncio.Event()
    recorder = Recorder()

    async def send_mail(event) -> None:
        sent.append(event.event_id)

    async def slow_record(event, session) -> None:
        entered.set()
        await release.wait()
        await recorder(event, session)

    batcher = InboxBatcher(box, every(slow_record, before=send_mail))
    delivery = asyncio.create_task(batcher.process(paid))
    await asyncio.wait_for(entered.wait(), timeout=10)
    delivery.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await delivery
    assert await batcher.process(paid) == Outcome.DUPLICATE
    assert sent == [paid.event_id]
    assert [e for e, _ in await effects_in_order(sessions)] == [str(paid.event_id)]
    await batcher.close()


async def test_a_message_cancelled_during_its_side_effect_finishes_it_and_its_copy_sends_nothing(
    box, sessions
):
    """Issue 27, finding 2: the channel closed while the mail was under way (its 250 still
    to come). The mail runs to its end and commits; the redelivery is a duplicate."""
    paid = events.order_paid()
    sent, writing, answer = [], asyncio.Event(), asyncio.Event()

    async def send_mail(event) -> None:
        writing.set()
        await answer.wait()
        sent.append(event.event_id)

    batcher = InboxBatcher(box, every(Recorder(), before=send_mail))
    delivery = asyncio.create_task(batcher.process(paid))
    await asyncio.wait_for(writing.wait(), timeout=10)
    delivery.cancel()
    redelivered = asyncio.create_task(batcher.process(paid))
    await asyncio.sleep(0)
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await delivery
    assert await redelivered == Outcome.DUPLICATE
    assert sent == [paid.event_id]
    assert [e for e, _ in await effects_in_order(sessions)] == [str(paid.event_id)]
    await batcher.close()


class Statements:
    """The statements the engine sends, as (first words, executemany), while recording."""

    def __init__(self, sessions):
        self.engines = db.sync_engines(sessions.kw["bind"])
        self.sent: list[tuple[str, bool]] = []
        self.texts: list[str] = []

    def _note(self, conn, cursor, statement, parameters, context, executemany):
        self.sent.append((" ".join(statement.split()[:3]), executemany))
        self.texts.append(statement)

    def __enter__(self):
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._note)
        return self

    def __exit__(self, *exc):
        for engine in self.engines:
            event.remove(engine, "before_cursor_execute", self._note)

    def of_inbox(self) -> list[tuple[str, bool]]:
        """The inbox's own statements (the effects' and the transaction's left out)."""
        return [(s, many) for (s, many), text in zip(self.sent, self.texts, strict=True)
                if re.search(r"\b(inbox|stream_progress)\b", text)]


async def test_a_batch_costs_the_inbox_three_or_four_statements_whatever_its_size(
    box, sessions
):
    paid = [events.order_paid() for _ in range(10)]
    with Statements(sessions) as new_orders:
        assert await box.process_batch(paid, every(Recorder())) == [Outcome.APPLIED] * 10
    # The seen ids and the orders' progress in one read; the rows in one write per table.
    assert new_orders.of_inbox() == [
        ("SELECT 'seen' AS", False),
        ("INSERT INTO inbox", True),
        ("INSERT INTO stream_progress", True),
    ]

    refunds = [events.order_refunded(p) for p in paid[:6]]
    with Statements(sessions) as moved:
        outcomes = await box.process_batch([*refunds, events.order_paid()], every(Recorder()))
    assert outcomes == [Outcome.APPLIED] * 7
    # Six orders' progress moved by one UPDATE, the new order's started by one INSERT.
    assert moved.of_inbox() == [
        ("SELECT 'seen' AS", False),
        ("INSERT INTO inbox", True),
        ("INSERT INTO stream_progress", False),
        ("UPDATE stream_progress SET", False),
    ]
    assert [await progress(sessions, p.order_id) for p in paid] == [2] * 6 + [1] * 4


async def test_a_progress_row_moved_after_the_batch_read_it_rolls_the_batch_back(
    box, sessions
):
    """What a competing consumer committing the same order meanwhile looks like: the
    conditional progress write finds fewer rows than it moved, and nothing is committed."""
    paid, other = events.order_paid(), events.order_paid()
    await box.process_batch([paid, other], every(Recorder()))
    refunded, refunded_other = events.order_refunded(paid), events.order_refunded(other)

    async def moves_progress_behind_the_batch(event, session) -> None:
        await session.execute(update(order_progress_table)
                              .where(order_progress_table.c.order_id == str(other.order_id))
                              .values(last_sequence=7))

    with pytest.raises(inbox.LostRace):
        await box.process_batch([refunded, refunded_other],
                                every(moves_progress_behind_the_batch))

    assert [await progress(sessions, e.order_id) for e in (paid, other)] == [1, 1]
    assert not await box.seen(str(refunded.event_id))


async def test_two_events_claiming_one_place_in_one_batch_are_a_conflict(box, sessions):
    paid = events.order_paid()
    await box.process(paid, every(Recorder()))
    one, other = events.order_refunded(paid), events.order_refunded(paid)

    with pytest.raises(Conflict) as raised:
        await box.process_batch([one, other], every(Recorder()))

    assert raised.value.holder == str(one.event_id)  # held within the batch, not yet written
    assert [e for e, _ in await effects_in_order(sessions)] == [str(paid.event_id)]
    assert await progress(sessions, paid.order_id) == 1


async def test_a_batch_finds_the_committed_holder_of_a_place(box, sessions):
    paid = events.order_paid()
    await box.process(paid, every(Recorder()))
    impostor = paid.model_copy(update={"event_id": uuid.uuid4()})  # another event at #1

    with pytest.raises(Conflict) as raised:
        await box.process_batch([events.order_paid(), impostor], every(Recorder()))

    assert raised.value.holder == str(paid.event_id)


async def test_an_event_whose_cause_is_in_flight_here_waits_for_it_instead_of_being_deferred(
    box, sessions
):
    """The shipped mail arrives while the thank-you mail of its order is still being sent in
    this process: it waits for that mail's commit and is then applied, in order, with no
    round trip through a wait queue (no OutOfOrder)."""
    paid = events.order_paid()
    shipped = events.order_shipped(paid)
    sent, release = [], asyncio.Event()

    async def send_mail(event) -> None:
        sent.append(event.event_id)
        if event.event_id == paid.event_id:
            await release.wait()  # the thank-you mail is slow

    batcher = InboxBatcher(box, every(Recorder(), before=send_mail))
    first = asyncio.create_task(batcher.process(paid))
    while not sent:
        await asyncio.sleep(0.01)
    early = asyncio.create_task(batcher.process(shipped))
    await asyncio.sleep(0.1)
    assert not early.done() and sent == [paid.event_id]  # waits; its mail not sent yet
    release.set()
    assert await first == Outcome.APPLIED
    assert await early == Outcome.APPLIED
    assert sent == [paid.event_id, shipped.event_id]
    assert [e for e, _ in await effects_in_order(sessions)] == [
        str(paid.event_id), str(shipped.event_id)]
    await batcher.close()


async def test_an_event_whose_cause_commits_while_its_state_is_read_is_applied_not_deferred(
    sessions
):
    """The shipped mail reads its order's state while the thank-you mail is in flight here;
    by the time it turns out early, that mail has committed and left. It is decided again
    (and applied) instead of a round trip through a wait queue."""
    paid = events.order_paid()
    shipped = events.order_shipped(paid)
    sent, release = [], asyncio.Event()
    first: asyncio.Task | None = None

    class CauseCommitsDuringTheRead(Inbox):
        async def claim(self, event, subscriptions):
            try:
                return await super().claim(event, subscriptions)
            except OutOfOrder:
                if event.event_id == shipped.event_id and not release.is_set():
                    release.set()  # the thank-you mail finishes and commits meanwhile
                    assert first is not None and await first == Outcome.APPLIED
                raise

    async def send_mail(event) -> None:
        sent.append(event.event_id)
        if event.event_id == paid.event_id:
            await release.wait()

    batcher = InboxBatcher(CauseCommitsDuringTheRead(sessions),
                           every(Recorder(), before=send_mail))
    first = asyncio.create_task(batcher.process(paid))
    while not sent:
        await asyncio.sleep(0.01)
    assert await batcher.process(shipped) == Outcome.APPLIED
    assert sent == [paid.event_id, shipped.event_id]
    await batcher.close()


async def test_an_event_whose_cause_fails_here_is_still_out_of_order(box, sessions):
    """The event it waited for failed (its mail was refused): the early event is decided
    again, is still early, and raises OutOfOrder, to be deferred as before."""
    paid = events.order_paid()
    refunded = events.order_refunded(paid)
    started, release = asyncio.Event(), asyncio.Event()

    async def send_mail(event) -> None:
        if event.event_id == paid.event_id:
            started.set()
            await release.wait()
            raise RuntimeError("SMTP refused the thank-you mail")

    batcher = InboxBatcher(box, every(Recorder(), before=send_mail))
    first = asyncio.create_task(batcher.process(paid))
    await asyncio.wait_for(started.wait(), 5)
    early = asyncio.create_task(batcher.process(refunded))
    release.set()
    with pytest.raises(RuntimeError, match="refused"):
        await first
    with pytest.raises(OutOfOrder):
        await early
    assert await effects_in_order(sessions) == []
    await batcher.close()


async def test_an_early_event_whose_cause_is_not_here_is_out_of_order_at_once(box, sessions):
    paid = events.order_paid()
    batcher = InboxBatcher(box, every(Recorder()))
    with pytest.raises(OutOfOrder):
        await asyncio.wait_for(batcher.process(events.order_refunded(paid)), 1)
    await batcher.close()
