"""What audit is, for the library, the tools and the tests (see messaging/spec.py)."""

from audit import api, handlers, store
from audit.settings import Settings
from contracts import EVENT_TYPES, VERSIONS
from messaging.spec import Consumes, Reads, ServiceSpec, Subscription


def subscriptions(_settings: Settings) -> list[Subscription]:
    """Every event type, recorded the same way."""
    return [Subscription(event, handlers.record_event) for event in EVENT_TYPES.values()]


SPEC = ServiceSpec(
    name="audit",
    settings=Settings,
    tables=store.metadata,
    router=api.router,
    routes=("GET /events", "GET /events/{event_id}"),
    consumes=Consumes(queue="audit.events", bindings=("#",), subscriptions=subscriptions),
    # The envelope of every version of every type; the rest it keeps without reading it.
    reads=tuple(Reads(t, v) for t, versions in VERSIONS.items() for v in versions),
)
