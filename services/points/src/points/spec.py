"""What points is, for the library, the tools and the tests (see messaging/spec.py)."""

from contracts import OrderPaid, OrderRefunded
from messaging.spec import Consumes, ServiceSpec, Subscription
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
)
