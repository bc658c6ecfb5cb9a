"""The wire contract: the versioned event envelope every service publishes and consumes.

docs/design.md (section 2, "Messages") fixes this shape; docs/evolution.md says how it
changes. Building an event is strict (an unknown field is an error). Reading one is a tolerant
reader: a field it does not know is kept, untouched, and never poison; an unknown event type
or version, a known field of the wrong type, a body that is not JSON or too large is poison,
so a consumer can tell a poison message from one it knows how to handle. An older version is
upcast to the current one as it is read (contracts/upcasting.py), so handlers see one shape.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import email_validator
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_extra_types.currency_code import ISO4217

# Every consumer must be able to handle any instant the contract accepts: a mail's Date
# header, a database column, a lag metric. 9999-12-31T23:59:59.999999Z passed the time-zone
# check and rounded into the year 10000 in the mailer; no producer's clock is that far off.
OCCURRED_AT_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
OCCURRED_AT_END = datetime(2100, 1, 1, tzinfo=UTC)  # exclusive
OCCURRED_AT_RULE = "from 2000-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z"

CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
CORRELATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_AMOUNT = 10_000_000
# A body larger than this is poison: no event of ours comes near it.
MAX_BODY_BYTES = 64 * 1024

CustomerId = Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN)]


def _whole_number(value: object) -> object:
    """1200.0 is the integer 1200 in JSON (and in JSON Schema); 12.5, "1200", true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Amount = Annotated[int, Field(ge=1, le=MAX_AMOUNT, strict=True), BeforeValidator(_whole_number)]


# Remembered: an address is checked where it is received and again in each event built from
# it (profiled: the check was 5 % of payment's CPU). The check is a pure function of the
# text; an invalid one raises and is not remembered.
@functools.lru_cache(maxsize=4096)
def _email(value: str) -> str:
    """A mail address by its syntax (normalised); special-use domains such as `.test` are
    addresses too (our own dev and test mail uses them), deliverability is SMTP's to find."""
    try:
        checked = email_validator.validate_email(
            value, check_deliverability=False, test_environment=True)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None
    return checked.normalized


Email = Annotated[str, Field(max_length=254, json_schema_extra={"format": "email"}),
                  AfterValidator(_email)]
# An ISO 4217 code ("JPY"); "jpy" is accepted and normalised to upper case.
Currency = ISO4217


class PoisonMessage(ValueError):
    """A message body that no retry can fix: not JSON, not our shape, unknown type/version."""


class _Strict(BaseModel):
    # The schema of what is sent (mode="serialization") lists every field as required: a
    # body always carries event_type and version, their defaults only spare the producer.
    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_serialization_defaults_required=True)


class PaymentData(_Strict):
    """The payment an order event is about: the `data` of OrderRefunded (v1) and of OrderPaid
    version 1."""

    payment_id: uuid.UUID
    customer_id: CustomerId
    email: Email
    amount: Amount
    currency: Currency


class Money(_Strict):
    """An amount in minor units of its currency (1200 JPY, 1200 USD cents): never one without
    the other."""

    value: Amount
    currency: Currency


class PaymentDataV2(_Strict):
    """The `data` of OrderPaid version 2: the amount is Money (docs/evolution.md says why)."""

    payment_id: uuid.UUID
    customer_id: CustomerId
    email: Email
    amount: Money


class ShipmentData(_Strict):
    """The shipment of a paid order: the `data` of OrderShipped (v1)."""

    shipment_id: uuid.UUID
    customer_id: CustomerId
    email: Email
    carrier: str = Field(min_length=1, max_length=64)
    tracking_number: str = Field(min_length=1, max_length=64)


class _Envelope(_Strict):
    # Ordering (docs/ordering.md): `sequence` counts one order's events from one producer,
    # its `stream` ("payment": paid = 1, refunded = 2; "shipment": shipped = 1). `after`
    # lists positions in other streams of the same order that an event of this type is
    # caused by, so a consumer that takes events of that stream applies them first.
    # Part of the contract, not of the body: the envelope is the same for every type.
    stream: ClassVar[str]
    after: ClassVar[tuple[tuple[str, int], ...]] = ()

    event_id: uuid.UUID
    version: Literal[1] = 1
    occurred_at: datetime = Field(description=f"with a time zone, {OCCURRED_AT_RULE}")
    # The same characters an HTTP X-Correlation-ID may have: it goes into log lines, mail
    # headers and span attributes, where a CR or LF would forge a line or a header.
    correlation_id: str = Field(pattern=CORRELATION_ID_PATTERN)
    order_id: uuid.UUID
    sequence: int = Field(ge=1)

    @field_validator("occurred_at")
    @classmethod
    def _must_be_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a time zone")
        try:
            in_utc = value.astimezone(UTC)  # 9999-12-31T23:59:59-23:59 is past 9999 in UTC
        except OverflowError:
            raise ValueError("occurred_at is out of range once in UTC") from None
        if not OCCURRED_AT_EARLIEST <= in_utc < OCCURRED_AT_END:
            raise ValueError(f"occurred_at is outside the contract's window: {OCCURRED_AT_RULE}")
        return value

    @property
    def routing_key(self) -> str:
        return routing_key_for(self.event_type)  # type: ignore[attr-defined]  # every event sets it

    def to_json(self) -> bytes:
        """The body: the fields of the contract, and any field a newer producer added that
        this reader does not know (kept untouched, `model_extra`)."""
        if not _has_extras(self):
            return self.model_dump_json().encode()
        return orjson.dumps(_with_extras(self, self.model_dump(mode="json")))


def _has_extras(model: BaseModel) -> bool:
    """Whether the model or a model nested in it (data, data.amount) kept unknown fields.

    Asked for every body written (the outbox, the inbox's digest): a plain loop over the
    field values, 5.0 -> 1.4 µs per OrderPaid, most of `to_json`'s own time."""
    if model.model_extra:
        return True
    for value in model.__dict__.values():  # the field values
        if isinstance(value, BaseModel) and _has_extras(value):
            return True
    return False


def _with_extras(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """`dumped` (model_dump of `model`) with the unknown fields read into it put back."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _with_extras(value, dumped[name])
    dumped.update(model.model_extra or {})  # JSON values as they were read
    return dumped


class OrderPaidV1(_Envelope):
    """OrderPaid version 1: the amount and its currency as two fields of `data`. Still read
    (upcast to version 2) and published when payment's ORDER_PAID_VERSION is 1."""

    stream: ClassVar[str] = "payment"
    event_type: Literal["OrderPaid"] = "OrderPaid"
    data: PaymentData


class OrderPaid(_Envelope):
    """OrderPaid, the current version (2): the amount is Money, {value, currency}."""

    stream: ClassVar[str] = "payment"
    event_type: Literal["OrderPaid"] = "OrderPaid"
    version: Literal[2] = 2  # type: ignore[assignment]  # each version its own literal
    data: PaymentDataV2


class OrderRefunded(_Envelope):
    stream: ClassVar[str] = "payment"
    event_type: Literal["OrderRefunded"] = "OrderRefunded"
    data: PaymentData
    # A refund follows the payment it refunds: it can never be an order's first event.
    sequence: int = Field(ge=2)


class OrderShipped(_Envelope):
    """Published by shipping when it ships a paid order: caused by OrderPaid (#1 of the
    payment stream), independent of OrderRefunded."""

    stream: ClassVar[str] = "shipment"
    after: ClassVar[tuple[tuple[str, int], ...]] = (("payment", 1),)
    event_type: Literal["OrderShipped"] = "OrderShipped"
    data: ShipmentData


# The current version of each event type: what handlers see.
Event = OrderPaid | OrderRefunded | OrderShipped
EVENT_TYPES: dict[str, type[Event]] = {
    "OrderPaid": OrderPaid, "OrderRefunded": OrderRefunded, "OrderShipped": OrderShipped,
}
# Any version a producer may publish and a consumer reads: the current ones and the older.
WireEvent = Event | OrderPaidV1
VERSIONS: dict[str, dict[int, type[WireEvent]]] = {
    "OrderPaid": {1: OrderPaidV1, 2: OrderPaid},
    "OrderRefunded": {1: OrderRefunded},
    "OrderShipped": {1: OrderShipped},
}


def version_of(model: type[WireEvent]) -> int:
    return int(model.model_fields["version"].default)


def routing_key_for(event_type: str) -> str:
    """`OrderPaid` -> `order.paid`: the event type in dotted lower case."""
    return ".".join(part.lower() for part in re.findall(r"[A-Z][a-z0-9]*", event_type))


def parse_event(body: bytes) -> Event:
    """Decode and validate one message body as its event type's current version (an older
    one upcast), or raise PoisonMessage saying why. Fields it does not know are kept on the
    event (`model_extra`, and in `to_json()`) and never checked."""
    event = read_event(body)
    try:
        return upcast(event)
    except ValidationError as exc:  # an unknown field of the older version the newer knows
        raise PoisonMessage(f"{event.event_type} version {event.version} does not upcast: "
                            f"{_brief(exc)}") from None


def read_event(body: bytes) -> WireEvent:
    """`parse_event` without the upcast: the event in the version it was published in."""
    if len(body) > MAX_BODY_BYTES:
        raise PoisonMessage(f"body is {len(body)} bytes, larger than {MAX_BODY_BYTES}")
    try:
        # orjson: a fifth of the CPU of json.loads per body, and strictly UTF-8 (json.loads
        # would also guess UTF-16 and UTF-32); its errors are json.JSONDecodeError too.
        raw: Any = orjson.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise PoisonMessage(f"body is a JSON {type(raw).__name__}, not an object")
    event_type = raw.get("event_type")
    versions = VERSIONS.get(event_type) if isinstance(event_type, str) else None
    if versions is None:
        raise PoisonMessage(f"unknown event_type {event_type!r}")
    version = raw.get("version")
    # `type(...) is int`: JSON's true is no version 1.
    model = versions.get(version) if type(version) is int else None
    if model is None:
        raise PoisonMessage(f"unknown version {version!r} of {event_type}")
    try:
        # Tolerant reader: unknown fields are allowed here (and only here), and kept.
        return model.model_validate(raw, extra="allow")
    except ValidationError as exc:
        raise PoisonMessage(f"{event_type} does not match the contract: {_brief(exc)}") from None


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


# Last: the upcasters are written in terms of the models above.
from contracts.upcasting import upcast as upcast  # noqa: E402  (re-exported)
