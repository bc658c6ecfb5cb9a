"""The Order aggregate: the only place that decides whether an order may be paid or refunded.

It records what happened as domain events; the application service hands them over
(`pull_domain_events`) to the outbox in the same transaction as the state change.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from contracts import Event, Money, OrderPaid, OrderRefunded, PaymentData, PaymentDataV2


class PaymentStatus(enum.StrEnum):
    PAID = "paid"
    REFUNDED = "refunded"


class NotRefundable(Exception):
    def __init__(self, payment_id: uuid.UUID, status: PaymentStatus):
        super().__init__(f"payment {payment_id} is {status}, only a paid payment can be refunded")


@dataclass
class Order:
    order_id: uuid.UUID
    payment_id: uuid.UUID
    customer_id: str
    email: str
    amount: int
    currency: str
    status: PaymentStatus
    correlation_id: str
    # How many events this order has recorded: the `sequence` of the last one.
    sequence: int = 0
    _events: list[Event] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def pay(
        cls, *, order_id: uuid.UUID, customer_id: str, email: str, amount: int, currency: str,
        correlation_id: str, now: datetime,
    ) -> Order:
        order = cls(order_id=order_id, payment_id=uuid.uuid4(), customer_id=customer_id,
                    email=email, amount=amount, currency=currency, status=PaymentStatus.PAID,
                    correlation_id=correlation_id)
        order._record(OrderPaid, now)
        return order

    def refund(self, *, now: datetime) -> None:
        if self.status is not PaymentStatus.PAID:
            raise NotRefundable(self.payment_id, self.status)
        self.status = PaymentStatus.REFUNDED
        self._record(OrderRefunded, now)

    def pull_domain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _record(self, event_cls: type[OrderPaid] | type[OrderRefunded], now: datetime) -> None:
        """The event in the current version of its type (payment.publishing may send an
        older one)."""
        self.sequence += 1
        event_id, order_id, sequence = uuid.uuid4(), self.order_id, self.sequence
        event: Event
        if event_cls is OrderPaid:
            event = OrderPaid(
                event_id=event_id, occurred_at=now, correlation_id=self.correlation_id,
                order_id=order_id, sequence=sequence,
                data=PaymentDataV2(payment_id=self.payment_id, customer_id=self.customer_id,
                                   email=self.email,
                                   amount=Money(value=self.amount, currency=self.currency)))
        else:
            event = OrderRefunded(
                event_id=event_id, occurred_at=now, correlation_id=self.correlation_id,
                order_id=order_id, sequence=sequence,
                data=PaymentData(payment_id=self.payment_id, customer_id=self.customer_id,
                                 email=self.email, amount=self.amount, currency=self.currency))
        self._events.append(event)
