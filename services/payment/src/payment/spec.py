"""What payment is, for the library, the tools and the tests (see messaging/spec.py)."""

from messaging.spec import ServiceSpec
from payment import api, handlers, store
from payment.publishing import ORDER_PAID_VERSIONS
from payment.settings import Settings

SPEC = ServiceSpec(
    name="payment",
    settings=Settings,
    tables=store.metadata,
    use_cases=handlers.payment_service,
    router=api.router,
    routes=("POST /payments", "GET /payments/{payment_id}",
            "POST /payments/{payment_id}/refund"),
    produces=("OrderPaid", "OrderRefunded"),
    versions={"OrderPaid": ORDER_PAID_VERSIONS},  # ORDER_PAID_VERSION picks one
)
