"""The payment use cases. Each runs in one transaction (messaging/transactions.py): the
order's new state and the events it recorded (staged in the outbox) commit together or not
at all. No HTTP, no AMQP here.

A refusal (the order is paid, the Idempotency-Key was used for another request) is raised
having written nothing (a `Refusal`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from contracts import WireEvent, utcnow
from messaging.transactions import Refusal, Transaction, UnitOfWork
from payment import store
from payment.domain import NotRefundable, Order
from payment.publishing import as_published
from payment.settings import Settings


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


class PaymentNotFound(Refusal):
    pass


class OrderAlreadyPaid(Refusal):
    def __init__(self, order: Order):
        super().__init__(f"order {order.order_id} is already paid (payment {order.payment_id})")
        self.order = order


class IdempotencyKeyReused(Refusal):
    def __init__(self, key: str):
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request")


class PaymentService:
    """Pay, refund, look up, each in a transaction of `transactions` (which, after the
    commit, passes the events staged to whoever wants them: the relay, the synchronous
    mode's dispatcher)."""

    def __init__(self, transactions: UnitOfWork, *, order_paid_version: int = 1):
        self._transactions = transactions
        self._order_paid_version = order_paid_version

    async def pay(self, cmd: PayCommand) -> tuple[Order, bool]:
        """Returns the payment and whether it is a replay of an earlier identical request."""

        async def work(tx: Transaction) -> tuple[Order, bool]:
            order = Order.pay(
                order_id=cmd.order_id, customer_id=cmd.customer_id, email=cmd.email,
                amount=cmd.amount, currency=cmd.currency, correlation_id=cmd.correlation_id,
                now=utcnow(),
            )
            if not await store.add(tx.connection, order, idempotency_key=cmd.idempotency_key,
                                   request_fingerprint=cmd.fingerprint()):
                # Its order or key has a payment (maybe a concurrent request's, committed
                # meanwhile; nothing was written): answer as that request was answered.
                return await self._repeated(tx, cmd), True
            await tx.stage(self._published(order))
            return order, False

        return await self._transactions.run(work)

    async def refund(self, payment_id: uuid.UUID) -> Order:
        async def work(tx: Transaction) -> Order:
            order = await store.get(tx.connection, payment_id)
            if order is None:
                raise PaymentNotFound(payment_id)
            read_sequence = order.sequence
            order.refund(now=utcnow())
            await store.save(tx.connection, order, read_sequence=read_sequence)
            await tx.stage(self._published(order))
            return order

        try:
            return await self._transactions.run(work)
        except store.ConcurrentChange:
            # A concurrent refund won; answer as if ours had come second.
            current = await self.get(payment_id)
            raise NotRefundable(payment_id, current.status) from None

    async def get(self, payment_id: uuid.UUID) -> Order:
        async with self._transactions.sessions() as session:
            order = await store.get(session, payment_id)
        if order is None:
            raise PaymentNotFound(payment_id)
        return order

    def _published(self, order: Order) -> list[WireEvent]:
        """The order's new events, in the versions payment publishes."""
        return [as_published(event, self._order_paid_version)
                for event in order.pull_domain_events()]

    async def _repeated(self, tx: Transaction, cmd: PayCommand) -> Order:
        """The payment this request repeats; raises the refusal if it conflicts with one."""
        if cmd.idempotency_key is not None:
            found = await store.get_by_idempotency_key(tx.connection, cmd.idempotency_key)
            if found is not None:
                order, fingerprint = found
                if fingerprint != cmd.fingerprint():
                    raise IdempotencyKeyReused(cmd.idempotency_key)
                return order
        paid = await store.get_by_order(tx.connection, cmd.order_id)
        if paid is not None:
            raise OrderAlreadyPaid(paid)
        raise RuntimeError(f"payment of order {cmd.order_id} conflicts with no payment of "
                           "the order or of its key")


def payment_service(transactions: UnitOfWork, settings: Settings) -> PaymentService:
    """Payment's use cases, as its spec builds them (`use_cases`)."""
    return PaymentService(transactions, order_paid_version=settings.order_paid_version)
