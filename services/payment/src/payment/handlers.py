"""The payment use cases. Each runs in one transaction: the order's new state and the events
it recorded (into the outbox) commit together or not at all. No HTTP, no AMQP here."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import Event, utcnow
from messaging.outbox_store import add_to_outbox
from payment import store
from payment.domain import NotRefundable, Order

EventsCommitted = Callable[[list[Event]], Awaitable[None]]


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


async def _nothing(_events: list[Event]) -> None:
    return None


class PaymentService:
    """Pay, refund, look up. `events_committed` runs after each commit (wakes the relay)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        events_committed: EventsCommitted = _nothing,
    ):
        self._sessions = sessions
        self._events_committed = events_committed

    async def pay(self, cmd: PayCommand) -> tuple[Order, bool]:
        """Returns the payment and whether it is a replay of an earlier identical request."""
        try:
            async with self._sessions() as session, session.begin():
                earlier = await self._earlier(session, cmd)
                if earlier is not None:
                    return earlier, True
                order = Order.pay(
                    order_id=cmd.order_id, customer_id=cmd.customer_id, email=cmd.email,
                    amount=cmd.amount, currency=cmd.currency, correlation_id=cmd.correlation_id,
                    now=utcnow(),
                )
                await store.add(session, order, idempotency_key=cmd.idempotency_key,
                                request_fingerprint=cmd.fingerprint())
                events = await _stage_events(session, order)
        except IntegrityError:
            # A concurrent request won the race for this order or key; answer as it would have.
            async with self._sessions() as session:
                earlier = await self._earlier(session, cmd)
            if earlier is None:
                raise
            return earlier, True
        await self._events_committed(events)
        return order, False

    async def refund(self, payment_id: uuid.UUID) -> Order:
        try:
            async with self._sessions() as session, session.begin():
                order = await store.get(session, payment_id)
                if order is None:
                    raise PaymentNotFound(payment_id)
                read_sequence = order.sequence
                order.refund(now=utcnow())
                await store.save(session, order, read_sequence=read_sequence)
                events = await _stage_events(session, order)
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

    async def _earlier(self, session: AsyncSession, cmd: PayCommand) -> Order | None:
        """The payment this request repeats, if any; raises if it conflicts with one."""
        if cmd.idempotency_key is not None:
            found = await store.get_by_idempotency_key(session, cmd.idempotency_key)
            if found is not None:
                order, fingerprint = found
                if fingerprint != cmd.fingerprint():
                    raise IdempotencyKeyReused(cmd.idempotency_key)
                return order
        paid = await store.get_by_order(session, cmd.order_id)
        if paid is not None:
            raise OrderAlreadyPaid(paid)
        return None


async def _stage_events(session: AsyncSession, order: Order) -> list[Event]:
    events = order.pull_domain_events()
    for event in events:
        await add_to_outbox(session, event)
    return events
