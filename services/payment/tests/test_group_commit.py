"""Concurrent payments share one transaction (group commit), each with its own answer, given
only once the transaction holding its rows has committed; a bad payment fails no other."""

import asyncio
import uuid

import pytest
from sqlalchemy import event, select

from messaging import outbox_store
from messaging.chassis import db
from messaging.outbox_store import outbox_table
from messaging.speed.transactions import GroupedTransactions, HandingOff
from payment import store
from payment.handlers import IdempotencyKeyReused, OrderAlreadyPaid, PayCommand, PaymentService

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(sessions_for):
    return await sessions_for(store.metadata, outbox_store.metadata)


@pytest.fixture
def commits(sessions):
    """How many transactions committed on the payments' engine."""
    counted = [0]

    def count(_conn):
        counted[0] += 1

    engines = db.sync_engines(sessions.kw["bind"])
    for engine in engines:
        event.listen(engine, "commit", count)
    yield counted
    for engine in engines:
        event.remove(engine, "commit", count)


class RecordingHandOff:
    """An OutboxHandOff that remembers what it was given."""

    def __init__(self):
        self.reserved: set[int] = set()
        self.committed: list = []
        self.withdrawn: list = []

    def reserve(self, rows):
        self.reserved.update(row.id for row in rows)

    def release(self, rows, *, committed):
        (self.committed if committed else self.withdrawn).extend(rows)


@pytest.fixture
def hand_off():
    return RecordingHandOff()


@pytest.fixture
async def payments(sessions, hand_off):
    transactions = GroupedTransactions(HandingOff(sessions, hand_off))
    yield PaymentService(transactions)
    await transactions.close()


def command(key: str | None = None, **changes) -> PayCommand:
    fields = dict(order_id=uuid.uuid4(), customer_id="alice", email="alice@example.com",
                  amount=1200, currency="JPY", correlation_id=str(uuid.uuid4()),
                  idempotency_key=key)
    return PayCommand(**(fields | changes))


async def committed_rows(sessions, order_id) -> tuple[int, int]:
    """(payments, outbox rows) of the order, as another connection sees them."""
    async with sessions() as session:
        paid = (await session.execute(
            select(store.payments.c.payment_id)
            .where(store.payments.c.order_id == str(order_id)))).all()
        staged = (await session.execute(
            select(outbox_table.c.id).where(outbox_table.c.order_id == str(order_id)))).all()
    return len(paid), len(staged)


async def test_concurrent_payments_share_transactions_and_each_is_answered_after_its_commit(
    payments, sessions, commits, hand_off
):
    cmds = [command() for _ in range(20)]

    async def pay_and_look(cmd):
        order, replayed = await payments.pay(cmd)
        # At the moment of the answer, the payment and its event are committed.
        return order, replayed, await committed_rows(sessions, cmd.order_id)

    results = await asyncio.gather(*(pay_and_look(cmd) for cmd in cmds))

    assert [order.order_id for order, _, _ in results] == [cmd.order_id for cmd in cmds]
    assert all(not replayed and seen == (1, 1) for _, replayed, seen in results)
    assert commits[0] < len(cmds), "every payment had a transaction of its own"
    # Every committed outbox row went to the relay, none was withdrawn.
    assert len(hand_off.committed) == len(cmds) and hand_off.withdrawn == []
    assert {row.id for row in hand_off.committed} == hand_off.reserved
    assert {row.order_id for row in hand_off.committed} == {str(c.order_id) for c in cmds}


async def test_refused_and_replayed_payments_in_a_group_get_their_own_answers(
    payments, sessions
):
    paid_before = command(key="before")
    await payments.pay(paid_before)
    fresh = [command() for _ in range(6)]
    twice = command(key="twice")
    group = [
        *fresh[:3],
        command(key="before", amount=999, order_id=paid_before.order_id),  # key reused: 422
        command(order_id=paid_before.order_id),  # the order is paid: 409
        paid_before,  # a repeat of the first request: replayed
        twice, twice,  # the same new request twice in one group: one payment, one replay
        command(order_id=fresh[0].order_id),  # paid earlier in this very group: 409
        *fresh[3:],
    ]

    results = await asyncio.gather(*(payments.pay(c) for c in group), return_exceptions=True)

    for cmd, result in zip(group[:3] + group[-3:], results[:3] + results[-3:], strict=True):
        order, replayed = result
        assert order.order_id == cmd.order_id and not replayed
        assert await committed_rows(sessions, cmd.order_id) == (1, 1)
    key_reused, order_paid, repeat, first, second, paid_in_group = results[3:9]
    assert isinstance(key_reused, IdempotencyKeyReused)
    assert isinstance(order_paid, OrderAlreadyPaid)
    assert isinstance(paid_in_group, OrderAlreadyPaid)
    assert repeat[1] is True
    assert sorted([first[1], second[1]]) == [False, True]
    assert first[0].payment_id == second[0].payment_id
    assert await committed_rows(sessions, paid_before.order_id) == (1, 1)
    assert await committed_rows(sessions, twice.order_id) == (1, 1)


async def test_a_payment_whose_statement_fails_fails_alone_and_the_rest_of_its_group_commits(
    payments, sessions, hand_off, monkeypatch
):
    broken = command()
    real_add = store.add

    async def add(conn, order, **kwargs):
        if order.order_id == broken.order_id:
            raise RuntimeError("this payment's insert fails")
        return await real_add(conn, order, **kwargs)

    monkeypatch.setattr(store, "add", add)
    others = [command() for _ in range(8)]
    group = [*others[:4], broken, *others[4:]]

    results = await asyncio.gather(*(payments.pay(c) for c in group), return_exceptions=True)

    assert isinstance(results[4], RuntimeError)
    for cmd, result in zip(others, results[:4] + results[5:], strict=True):
        assert result[0].order_id == cmd.order_id
        assert await committed_rows(sessions, cmd.order_id) == (1, 1)
    assert await committed_rows(sessions, broken.order_id) == (0, 0)
    # The group that held the broken payment rolled back: its rows were withdrawn.
    assert hand_off.withdrawn
    assert {row.order_id for row in hand_off.committed} == {str(c.order_id) for c in others}


async def test_a_lone_payment_is_its_own_transaction(payments, sessions, commits, hand_off):
    cmd = command()
    await payments.pay(cmd)

    assert commits[0] == 1
    assert [row.order_id for row in hand_off.committed] == [str(cmd.order_id)]
