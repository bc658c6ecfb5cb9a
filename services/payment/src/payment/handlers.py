"""The payment use cases. Each runs in one transaction: the order's new state and the events
it recorded (into the outbox) commit together or not at all. No HTTP, no AMQP here.

Group commit: payments that arrive while another group commits share the next transaction
(most of a payment's database CPU is the session and transaction around its two inserts).
Each payment still has its own statements, run in its request's context (its trace, its
correlation id), and its own answer, given only after the commit that holds its payment
and outbox rows. A payment whose order or key is taken writes nothing (ON CONFLICT DO
NOTHING) and is answered from what the transaction sees, earlier payments of the same group
included; if anything else fails, the group rolls back and each payment runs alone, exactly
as without grouping. A payment arriving alone is a group of one and runs alone. The committed
outbox rows go to the relay in-process (`OutboxHandOff`), not read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from contracts import WireEvent, utcnow
from messaging.outbox_store import NoHandOff, OutboxHandOff, OutboxRow, add_to_outbox
from messaging.speed.group_commit import GroupCommit
from payment import store
from payment.domain import NotRefundable, Order
from payment.publishing import as_published

# Gets the events as published (in the versions ORDER_PAID_VERSION picks).
EventsCommitted = Callable[[list[WireEvent]], Awaitable[None]]

# Payments per shared transaction, at most: enough for every concurrent request of a busy
# instance, small enough that one group's statements hold the connection only briefly.
MAX_GROUP = 64


@dataclass(frozen=True)
class PayCommand:
    order_id: uuid.UUID
    customer_id: str
    email: str
    amount: int
    currency: str
    correlation_id: str
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        """What must match for a repeated Idempotency-Key to count as the same request."""
        business = [str(self.order_id), self.customer_id, self.email.lower(), self.amount,
                    self.currency]
        return hashlib.sha256(json.dumps(business).encode()).hexdigest()


class PaymentNotFound(Exception):
    pass


class OrderAlreadyPaid(Exception):
    def __init__(self, order: Order):
        super().__init__(f"order {order.order_id} is already paid (payment {order.payment_id})")
        self.order = order


class IdempotencyKeyReused(Exception):
    def __init__(self, key: str):
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request")


async def _nothing(_events: list[WireEvent]) -> None:
    return None


@dataclass
class _Paid:
    """A payment's outcome, decided in a transaction: its order, whether it repeats an
    earlier request, and what it staged (nothing for a repeat)."""

    order: Order
    replayed: bool
    events: list[WireEvent] = field(default_factory=list)
    rows: list[OutboxRow] = field(default_factory=list)


# What a payment's work in a transaction comes to: paid (or replayed), or the refusal to
# raise in its request (OrderAlreadyPaid, IdempotencyKeyReused), having written nothing.
_Outcome = _Paid | OrderAlreadyPaid | IdempotencyKeyReused


class PaymentService:
    """Pay, refund, look up. `events_committed` runs after each commit, in the request;
    `hand_off` gets the committed outbox rows (the relay, which publishes them)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        events_committed: EventsCommitted = _nothing,
        *,
        hand_off: OutboxHandOff | None = None,
        max_group: int = MAX_GROUP,
        order_paid_version: int = 1,
    ):
        self._sessions = sessions
        self._events_committed = events_committed
        self._hand_off = hand_off if hand_off is not None else NoHandOff()
        self._max_group = max_group
        self._order_paid_version = order_paid_version
        self._group: GroupCommit[PayCommand, _Outcome] = GroupCommit(
            self._pay_group, max_group=max_group, name="payment-group-commit")

    async def pay(self, cmd: PayCommand) -> tuple[Order, bool]:
        """Returns the payment and whether it is a replay of an earlier identical request."""
        outcome = await self._group.submit(cmd) if self._max_group > 1 else None
        if outcome is None:
            outcome = await self._pay_alone(cmd)
        if not isinstance(outcome, _Paid):
            raise outcome
        if not outcome.replayed:
            await self._events_committed(outcome.events)
        return outcome.order, outcome.replayed

    async def close(self) -> None:
        """Stop the group worker. A group cut short rolls back; its requests are cancelled."""
        await self._group.close()

    async def _pay_alone(self, cmd: PayCommand) -> _Outcome:
        """The payment in a transaction of its own: a group of one."""
        [outcome] = await self._pay_group([cmd], [contextvars.copy_context()])
        return outcome

    async def _pay_group(self, cmds: list[PayCommand],
                         contexts: list[contextvars.Context]) -> list[_Outcome]:
        """Payments in one transaction, each in its request's context."""
        outcomes: list[_Outcome] = []
        with self._handing_off() as rows:
            async with self._sessions() as session, session.begin():
                conn = await session.connection()
                for cmd, context in zip(cmds, contexts, strict=True):
                    outcome = await asyncio.create_task(self._pay_in(conn, cmd),
                                                        context=context)
                    if isinstance(outcome, _Paid):
                        rows.extend(outcome.rows)
                    outcomes.append(outcome)
                self._hand_off.reserve(rows)
        return outcomes

    @contextlib.contextmanager
    def _handing_off(self) -> Iterator[list[OutboxRow]]:
        """The rows the block reserves go to the relay if it ends (committed), are withdrawn
        if it raises (rolled back, or a commit whose outcome is unknown: the poll decides)."""
        rows: list[OutboxRow] = []
        try:
            yield rows
        except BaseException:
            self._hand_off.release(rows, committed=False)
            raise
        self._hand_off.release(rows, committed=True)

    async def _pay_in(self, conn: AsyncConnection, cmd: PayCommand) -> _Outcome:
        """The payment's statements in the caller's transaction."""
        order = Order.pay(
            order_id=cmd.order_id, customer_id=cmd.customer_id, email=cmd.email,
            amount=cmd.amount, currency=cmd.currency, correlation_id=cmd.correlation_id,
            now=utcnow(),
        )
        if not await store.add(conn, order, idempotency_key=cmd.idempotency_key,
                               request_fingerprint=cmd.fingerprint()):
            # Its order or key has a payment (maybe from a concurrent request, committed
            # meanwhile): answer as that request would have been.
            try:
                earlier = await self._earlier(conn, cmd)
            except (OrderAlreadyPaid, IdempotencyKeyReused) as refused:
                return refused
            if earlier is None:
                raise RuntimeError(f"payment {order.payment_id} conflicts with no payment of "
                                   f"order {cmd.order_id} or of its key")
            return _Paid(earlier, replayed=True)
        events = self._published(order)
        rows = [await add_to_outbox(conn, event) for event in events]
        return _Paid(order, replayed=False, events=events, rows=rows)

    def _published(self, order: Order) -> list[WireEvent]:
        """The order's new events, in the versions payment publishes."""
        return [as_published(event, self._order_paid_version)
                for event in order.pull_domain_events()]

    async def refund(self, payment_id: uuid.UUID) -> Order:
        try:
            with self._handing_off() as rows:
                async with self._sessions() as session, session.begin():
                    order = await store.get(session, payment_id)
                    if order is None:
                        raise PaymentNotFound(payment_id)
                    read_sequence = order.sequence
                    order.refund(now=utcnow())
                    await store.save(session, order, read_sequence=read_sequence)
                    events = self._published(order)
                    rows.extend([await add_to_outbox(session, event) for event in events])
                    self._hand_off.reserve(rows)
        except store.ConcurrentChange:
            # A concurrent refund won; answer as if ours had come second.
            current = await self.get(payment_id)
            raise NotRefundable(payment_id, current.status) from None
        await self._events_committed(events)
        return order

    async def get(self, payment_id: uuid.UUID) -> Order:
        async with self._sessions() as session:
            order = await store.get(session, payment_id)
        if order is None:
            raise PaymentNotFound(payment_id)
        return order

    async def _earlier(self, conn: store.Executor, cmd: PayCommand) -> Order | None:
        """The payment this request repeats, if any; raises if it conflicts with one."""
        if cmd.idempotency_key is not None:
            found = await store.get_by_idempotency_key(conn, cmd.idempotency_key)
            if found is not None:
                order, fingerprint = found
                if fingerprint != cmd.fingerprint():
                    raise IdempotencyKeyReused(cmd.idempotency_key)
                return order
        paid = await store.get_by_order(conn, cmd.order_id)
        if paid is not None:
            raise OrderAlreadyPaid(paid)
        return None
