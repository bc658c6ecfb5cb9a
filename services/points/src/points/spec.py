"""What points is, for the library, the tools and the tests (see messaging/spec.py)."""

from contracts import OrderPaid, OrderRefunded
from messaging.spec import Consumes, Reads, ServiceSpec, Subscription
from points import api, handlers, store
from points.settings import Settings


def subscriptions(_settings: Settings) -> list[Subscription]:
    return [
        Subscription(OrderPaid, handlers.grant_points),
        Subscription(OrderRefunded, handlers.revoke_points),
    ]


SPEC = ServiceSpec(
    name="points",
    settings=Settings,
    tables=store.metadata,
    router=api.router,
    routes=("GET /customers/{customer_id}/points",),
    consumes=Consumes(queue="points.events", bindings=("order.*",), subscriptions=subscriptions),
    # Version 1 as the upcaster reads it into version 2's Money.
    reads=(
        Reads("OrderPaid", 1, {"data.customer_id": "string", "data.amount": "integer",
                               "data.currency": "string"}),
        Reads("OrderPaid", 2, {"data.customer_id": "string", "data.amount.value": "integer"}),
        Reads("OrderRefunded", 1, {"data.customer_id": "string"}),
        # Routed here by order.* and ignored, but parsed first: a version it cannot parse
        # would be poison here too.
        Reads("OrderShipped", 1),
    ),
)
