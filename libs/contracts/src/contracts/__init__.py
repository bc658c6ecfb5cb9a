"""The wire contract: the versioned event envelope every service publishes and consumes.

docs/design.md (section 2, "Messages") fixes this shape. Parsing is strict: unknown fields,
unknown event types and unknown versions are rejected, so a consumer can tell a poison message
from one it knows how to handle.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError, field_validator
from pydantic_extra_types.currency_code import ISO4217

CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_AMOUNT = 10_000_000
# A body larger than this is poison: no event of ours comes near it.
MAX_BODY_BYTES = 64 * 1024

CustomerId = Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN)]
Amount = Annotated[int, Field(ge=1, le=MAX_AMOUNT, strict=True)]
# An ISO 4217 code ("JPY"); "jpy" is accepted and normalised to upper case.
Currency = ISO4217


class PoisonMessage(ValueError):
    """A message body that no retry can fix: not JSON, not our shape, unknown type/version."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PaymentData(_Strict):
    """The payment an order event is about: the `data` of OrderPaid and OrderRefunded (v1)."""

    payment_id: uuid.UUID
    customer_id: CustomerId
    email: EmailStr
    amount: Amount
    currency: Currency


class _Envelope(_Strict):
    event_id: uuid.UUID
    version: Literal[1] = 1
    occurred_at: datetime
    correlation_id: str = Field(min_length=1, max_length=128)
    order_id: uuid.UUID
    sequence: int = Field(ge=1)

    @field_validator("occurred_at")
    @classmethod
    def _must_be_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a time zone")
        return value

    @property
    def routing_key(self) -> str:
        return routing_key_for(self.event_type)  # type: ignore[attr-defined]  # every event sets it

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class OrderPaid(_Envelope):
    event_type: Literal["OrderPaid"] = "OrderPaid"
    data: PaymentData


class OrderRefunded(_Envelope):
    event_type: Literal["OrderRefunded"] = "OrderRefunded"
    data: PaymentData


Event = OrderPaid | OrderRefunded
EVENT_TYPES: dict[str, type[Event]] = {"OrderPaid": OrderPaid, "OrderRefunded": OrderRefunded}


def routing_key_for(event_type: str) -> str:
    """`OrderPaid` -> `order.paid`: the event type in dotted lower case."""
    return ".".join(part.lower() for part in re.findall(r"[A-Z][a-z0-9]*", event_type))


def parse_event(body: bytes) -> Event:
    """Decode and validate one message body, or raise PoisonMessage saying why."""
    if len(body) > MAX_BODY_BYTES:
        raise PoisonMessage(f"body is {len(body)} bytes, larger than {MAX_BODY_BYTES}")
    try:
        raw: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise PoisonMessage(f"body is a JSON {type(raw).__name__}, not an object")
    event_type = raw.get("event_type")
    model = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        raise PoisonMessage(f"unknown event_type {event_type!r}")
    if raw.get("version") != 1:
        raise PoisonMessage(f"unknown version {raw.get('version')!r} of {event_type}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise PoisonMessage(f"{event_type} does not match the contract: {_brief(exc)}") from None


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
