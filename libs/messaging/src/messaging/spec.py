"""What a service declares about itself, and how the tooling finds every service.

Each service package owns one `ServiceSpec` (`<service>/spec.py`): its name, settings (and so
its default port and database), tables, routes, the events it produces and, for a consuming
service, its queue, bindings and subscriptions. The library, the tools and the tests read the
specs; none of them keeps a list of services of its own.

A service registers its spec with one line in its own pyproject.toml, in the entry-point
group `mini_ec.services` (a table of the `project` section):

    <name> = "<name>.spec:SPEC"

`installed()` returns the specs of every installed service, ordered by default port.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from contracts import EVENT_TYPES, Event, routing_key_for, version_of

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy import MetaData

    from messaging.chassis.db import Statements
    from messaging.chassis.settings import ServiceSettings
    from messaging.transactions import UnitOfWork

ENTRY_POINT_GROUP = "mini_ec.services"

# Writes the event's effect in the caller's (the inbox's) transaction.
Handler = Callable[[Event, "Statements"], Awaitable[None]]
# An effect outside the database (a mail): runs before the inbox transaction, at least once.
SideEffect = Callable[[Event], Awaitable[None]]


E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Subscription(Generic[E]):
    """Events of type `event` are handled by `handler`, after `before` (if any) did its work
    outside the database: `Subscription(OrderPaid, grant)`. Typed: `grant` takes an
    OrderPaid, and the type checker holds it to that."""

    event: type[E]
    handler: Callable[[E, Statements], Awaitable[None]]
    before: Callable[[E], Awaitable[None]] | None = None

    @property
    def event_type(self) -> str:
        return str(self.event.model_fields["event_type"].default)

    def __post_init__(self) -> None:
        if EVENT_TYPES.get(self.event_type) is not self.event:
            raise ValueError(f"{self.event!r} is not an event type of the contract; "
                             f"known: {sorted(EVENT_TYPES)}")


class Subscriptions:
    """The one registry of a consuming service: which handler, and which step before the
    transaction, takes each event type. The RabbitMQ consumer (through the inbox) and the
    in-process dispatcher both apply events with it."""

    def __init__(self, subscriptions: Iterable[Subscription[Any]] = ()):
        self._by_type: dict[str, Subscription[Any]] = {}
        for sub in subscriptions:
            if sub.event_type in self._by_type:
                raise ValueError(f"two subscriptions for {sub.event_type}")
            self._by_type[sub.event_type] = sub
        self._streams = frozenset(sub.event.stream for sub in self._by_type.values())

    @classmethod
    def every(cls, handler: Handler, before: SideEffect | None = None) -> Subscriptions:
        """The same handler (and step) for every event type of the contract."""
        return cls(Subscription(event, handler, before) for event in EVENT_TYPES.values())

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(self._by_type)

    @property
    def streams(self) -> frozenset[str]:
        """The streams (producers' sequences, contracts) of the event types taken here: an
        event caused by one of them waits for its cause (docs/ordering.md)."""
        return self._streams

    def handler_for(self, event: Event) -> Handler | None:
        """None: nobody subscribed to this type; the event is acked as ignored."""
        sub = self._by_type.get(event.event_type)
        return sub.handler if sub is not None else None

    def before_for(self, event: Event) -> SideEffect | None:
        sub = self._by_type.get(event.event_type)
        return sub.before if sub is not None else None

    def __iter__(self) -> Iterator[Subscription[Any]]:
        return iter(self._by_type.values())


def every(handler: Handler, before: SideEffect | None = None) -> Subscriptions:
    """`Subscriptions.every`: one handler (and step) for every event type of the contract."""
    return Subscriptions.every(handler, before)


@dataclass(frozen=True)
class Consumes:
    """The queue a consuming service owns, what it binds, and what it does with each event.

    `subscriptions` builds the handlers from the service's settings (an SMTP sender, say).
    An event type without a subscription is acknowledged and counted as ignored.
    """

    queue: str
    bindings: tuple[str, ...]
    subscriptions: Callable[[Any], Iterable[Subscription[Any]]]

    def registry(self, settings: Any) -> Subscriptions:
        """The service's subscriptions, built with its settings."""
        return Subscriptions(self.subscriptions(settings))

    def receives(self, event_type: str) -> bool:
        """Whether the bindings route `event_type` to the queue (topic matching)."""
        return any(topic_matches(b, routing_key_for(event_type)) for b in self.bindings)


# What every consumer reads of every event, whatever its handlers do: the inbox, the order
# check, the traces and the logs (JSON Schema types). Part of every declared reader.
ENVELOPE_READS: Mapping[str, str] = {
    "event_id": "string", "event_type": "string", "version": "integer",
    "occurred_at": "string", "correlation_id": "string", "order_id": "string",
    "sequence": "integer",
}


@dataclass(frozen=True)
class Reads:
    """The consumer-driven contract of one event type in one version: the fields (dotted
    paths into the body, `data.amount.value`) a consuming service reads, with the JSON type
    it expects of each. The envelope (ENVELOPE_READS) is read anyway. `make test` holds the
    producer's published schema to it (docs/evolution.md, "Consumer-driven contracts"):
    removing or retyping a field read here, or publishing a version of the event type that
    no `Reads` of a subscriber names, fails."""

    event_type: str
    version: int
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def every_field(self) -> dict[str, str]:
        return {**ENVELOPE_READS, **self.fields}


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # also its module (`python -m <name>`) and its broker user
    settings: type[ServiceSettings]
    tables: MetaData
    routes: tuple[str, ...]  # "GET /orders/{order_id}", for people and checks
    # Its HTTP routes: `router(use_cases(transactions, settings))` for a service with use
    # cases that change state (a producer's), else `router(sessions)` (a consumer's reads).
    router: Callable[..., APIRouter] | None = None
    use_cases: Callable[[UnitOfWork, Any], object] | None = None
    produces: tuple[str, ...] = ()  # event types it publishes (through its outbox)
    consumes: Consumes | None = None
    # Settings the local stack (devstack) sets for it besides PORT, DATABASE_URL, RABBITMQ_URL;
    # "{smtp_port}" is replaced by the local SMTP sink's port.
    local_env: dict[str, str] = field(default_factory=dict)
    # The versions of a produced event type it can publish (a setting picks one), where
    # that is not just the type's current version.
    versions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # A consumer: what it reads of each event type and version it takes (Reads).
    reads: tuple[Reads, ...] = ()

    def published(self) -> list[tuple[str, int]]:
        """(event type, version) of everything it can publish."""
        return [(t, v) for t in self.produces
                for v in self.versions.get(t, (version_of(EVENT_TYPES[t]),))]

    @property
    def port(self) -> int:
        """The default port: the `port` default of its settings."""
        return int(self.settings.model_fields["port"].default)

    @property
    def default_database_url(self) -> str:
        return str(self.settings.model_fields["database_url"].default)

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(self.tables.tables)


@cache
def installed() -> tuple[ServiceSpec, ...]:
    """Every installed service's spec, ordered by default port."""
    specs = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        spec = entry.load()
        if not isinstance(spec, ServiceSpec) or spec.name != entry.name:
            raise TypeError(f"entry point {entry.name} = {entry.value} is not the ServiceSpec "
                            f"of a service named {entry.name!r}")
        specs.append(spec)
    return tuple(sorted(specs, key=lambda s: (s.port, s.name)))


def names() -> tuple[str, ...]:
    return tuple(spec.name for spec in installed())


def consumers() -> tuple[ServiceSpec, ...]:
    """The specs of the services that consume events, ordered by default port."""
    return tuple(spec for spec in installed() if spec.consumes is not None)


def named(name: str) -> ServiceSpec:
    """The spec of service `name`, or ValueError naming the known ones."""
    for spec in installed():
        if spec.name == name:
            return spec
    raise ValueError(f"unknown service {name!r}; known: {', '.join(sorted(names()))}")


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: `*` is one word, `#` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))
