"""What shipping is, for the library, the tools and the tests (see messaging/spec.py)."""

from functools import partial

from contracts import OrderPaid, OrderRefunded
from messaging.spec import Consumes, Reads, ServiceSpec, Subscription
from shipping import api, handlers, store
from shipping.settings import Settings


def subscriptions(settings: Settings) -> list[Subscription]:
    return [
        Subscription(OrderPaid, partial(handlers.ship, carrier=settings.carrier)),
        Subscription(OrderRefunded, handlers.request_return),
    ]


SPEC = ServiceSpec(
    name="shipping",
    settings=Settings,
    tables=store.metadata,
    router=api.router,
    routes=("GET /shipments",),
    # Staged in its own outbox in the inbox transaction of the OrderPaid; relayed by its
    # runtime with publisher confirms (messaging/chassis/runtime.py).
    produces=("OrderShipped",),
    consumes=Consumes(queue="shipping.events", bindings=("order.paid", "order.refunded"),
                      subscriptions=subscriptions),
    reads=(
        Reads("OrderPaid", 1, {"data.customer_id": "string", "data.email": "string"}),
        Reads("OrderPaid", 2, {"data.customer_id": "string", "data.email": "string"}),
        Reads("OrderRefunded", 1),  # the envelope: which order
    ),
)
