"""What every accepted payment must have caused, and what is missing or extra: pure decisions,
no I/O (checker.py reads the services, shop.py records the payments)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

THANK_YOU = "Thank you for your order"
SHIPPED = "Your order has shipped"
REFUND = "Your refund"


@dataclass(frozen=True)
class Payment:
    """A payment the load run saw accepted (201), and whether its refund was accepted too."""

    order_id: str
    customer_id: str
    amount: int
    correlation_id: str
    refunded: bool = False


@dataclass(frozen=True)
class Seen:
    """What the services show for one order."""

    points: tuple[tuple[str, int], ...]  # (reason, delta) of the customer's entries for it
    mails: tuple[str, ...]  # subjects
    audit: tuple[str, ...]  # event types
    shipments: tuple[str, ...]  # statuses


def expected(payment: Payment) -> Seen:
    """Each effect once: a points entry, a mail and an audit record per event, one shipment
    (docs/api.md); a refund takes the points back, mails, is audited and asks for a return."""
    granted = payment.amount // 100  # points.handlers.points_for
    if not payment.refunded:
        return Seen(points=(("order paid", granted),), mails=(THANK_YOU, SHIPPED),
                    audit=("OrderPaid", "OrderShipped"), shipments=("shipped",))
    return Seen(points=(("order paid", granted), ("order refunded", -granted)),
                mails=(THANK_YOU, SHIPPED, REFUND),
                audit=("OrderPaid", "OrderShipped", "OrderRefunded"),
                shipments=("return_requested",))


def mismatches(payment: Payment, seen: Seen) -> list[str]:
    """What differs from `expected`, one line per effect: `missing …` or `extra …` (an effect
    applied twice is as wrong as one not applied). Empty when the order is complete."""
    want = expected(payment)
    lines: list[str] = []
    for what in ("points", "mails", "audit", "shipments"):
        wanted, got = Counter(getattr(want, what)), Counter(getattr(seen, what))
        lines += [f"missing {what} {item}" for item in sorted((wanted - got).elements(), key=str)]
        lines += [f"extra {what} {item}" for item in sorted((got - wanted).elements(), key=str)]
    return lines
