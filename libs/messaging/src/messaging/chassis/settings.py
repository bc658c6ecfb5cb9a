"""Settings every service reads from its environment, validated once at start.

A missing or malformed setting stops the service with one clear line (`load_settings`),
never with a traceback half-way through handling a request.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from yarl import URL

from messaging.operations.killswitch import Policy

SUPPORTED_DATABASES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")


def _database_url(value: str) -> str:
    if not value.startswith(SUPPORTED_DATABASES):
        raise ValueError(f"must start with one of {', '.join(SUPPORTED_DATABASES)}")
    try:
        port = make_url(value).port  # parses the whole URL; a bad port raises here
    except (ValueError, ArgumentError) as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    if value.startswith("sqlite") and make_url(value).database in (None, "", ":memory:"):
        # An in-memory database would lose every record and dedupe entry at each restart.
        raise ValueError("names no SQLite file (e.g. sqlite+aiosqlite:///var/service.db)")
    return value


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _host(value: str) -> str:
    """An IP address or a host name; a dotted quad that is no IPv4 address is refused."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is neither an IP address nor a host name")
    return value


def _amqp_url(value: str) -> str:
    if not value.startswith(("amqp://", "amqps://")):
        raise ValueError("must be an amqp:// or amqps:// URL")
    try:
        URL(value).port  # noqa: B018 (parsing is the check)
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    return value


# Checked at start, so a typo stops the service with one line instead of a background retry.
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
AmqpUrl = Annotated[str, AfterValidator(_amqp_url)]


def checked_admin_token(value: SecretStr | None) -> SecretStr | None:
    """ADMIN_TOKEN, of a consumer and of the console that steers it: 16-256 characters."""
    if value is not None and not 16 <= len(value.get_secret_value()) <= 256:
        raise ValueError("must be 16-256 characters (a guessable token guards nothing)")
    return value


class ProcessSettings(BaseSettings):
    """How a process runs, whatever it hosts: every service, and the synchronous mode (one
    process for all of them). A base: `class ServiceSettings(ProcessSettings)`."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # The event loop of the process (its HTTP server, consumer, relay): uvloop's costs less
    # CPU per message; `asyncio` is the standard library's, to rule uvloop out.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # A span per SQL statement (SQLAlchemy instrumentation). Off: the request, relay, publish
    # and consumer spans stay, one trace per order, without a span for each statement
    # (about a tenth of a consumer's CPU). On in the compose stack (.env), for Jaeger.
    otel_sql_spans: Literal["on", "off"] = "off"
    # The speed layer (messaging/speed/): group commit of a use case's transactions and of
    # consumed messages' inbox transactions, the in-process hand-off of committed outbox rows
    # to the relay. Off: each use case and each message has a transaction of its own, the
    # plain path; the guarantees are the same, the CPU per message higher.
    speed_layer: Literal["on", "off"] = "on"

    @property
    def sql_spans(self) -> bool:
        return self.otel_sql_spans == "on"

    @property
    def speed(self) -> bool:
        return self.speed_layer == "on"


class ServiceSettings(ProcessSettings):
    """Settings shared by all four services. Environment variable = field name upper-cased."""

    # allow_inf_nan=False: "inf" or "nan" for a duration or a size is a typo, not a choice.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    port: int = Field(8000, ge=1, le=65535)
    host: str = "127.0.0.1"
    database_url: str = "sqlite+aiosqlite:///var/service.db"
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/"
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # HTTP limits (docs/limits.md): a larger request body gets 413 before it is parsed; a
    # client gets this long to send its request's headers, then as long again for its body;
    # at most this many connections are served at once, one client address holding at most
    # this share of them (1 = no per-client cap: behind a proxy every client has its address).
    http_max_body_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    http_header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    http_body_timeout_seconds: float = Field(10.0, gt=0, le=300)
    http_max_connections: int = Field(512, ge=8, le=65536)
    http_client_connection_share: float = Field(0.5, gt=0, le=1)

    # Validators by field name, so they hold for a service that overrides the default.
    _check_database_url = field_validator("database_url")(_database_url)
    _check_rabbitmq_url = field_validator("rabbitmq_url")(_amqp_url)
    _check_host = field_validator("host")(_host)


class OutboxSettings(BaseSettings):
    """Settings of a service that publishes events through its outbox (a producer; a consumer
    whose spec `produces` events). A mixin: `class Settings(ConsumerSettings, OutboxSettings)`."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Fallback poll of the outbox; the relay is woken right after each commit anyway.
    outbox_poll_seconds: float = Field(1.0, gt=0, le=60)
    # While polls find nothing and nothing was committed, the poll backs off (doubling) to
    # this: an idle relay wakes this rarely (docs/failure.md). Below outbox_poll_seconds, no
    # back-off.
    outbox_idle_poll_seconds: float = Field(10.0, gt=0, le=300)
    outbox_batch_size: int = Field(200, ge=1, le=5000)
    # How long published outbox rows are kept (to look at) before they are deleted.
    outbox_retention_hours: float = Field(24 * 7, gt=0)


class ConsumerSettings(ServiceSettings):
    """Settings of a service that consumes events from its own queue."""

    prefetch: int = Field(32, ge=1, le=1000)
    # At most this many consumed messages share one inbox transaction; 1 = one each.
    batch_size: int = Field(32, ge=1, le=1000)
    # Delays of the retry wait queues, in seconds; one attempt per delay, then the DLQ.
    retry_delays: Annotated[tuple[int, ...], NoDecode] = (1, 5, 30)
    # Out-of-order events wait through the same queues, with a budget of their own.
    max_deferrals: int = Field(10, ge=0, le=100)
    # Readiness fails when messages are in flight and none has settled for this long (a
    # consumer whose prefetch is taken by work that never ends takes no more messages).
    consumer_stall_seconds: float = Field(60.0, gt=0, le=3600)
    # How long the inbox remembers a processed event id (the dedupe window).
    inbox_retention_hours: float = Field(24 * 7, gt=0)
    # The kill switch (docs/failure.md#the-kill-switch): it pauses consuming when at least
    # this share of at least KILL_SWITCH_MIN_MESSAGES outcomes in the window failed
    # transiently, probes after the cool-down, doubles the cool-down after a failed probe.
    kill_switch_failure_ratio: float = Field(0.8, gt=0, le=1)
    kill_switch_window_seconds: float = Field(30.0, gt=0, le=3600)
    kill_switch_min_messages: int = Field(10, ge=1, le=100_000)
    kill_switch_cooldown_seconds: float = Field(5.0, gt=0, le=3600)
    kill_switch_max_cooldown_seconds: float = Field(30.0, gt=0, le=86_400)
    # Bearer token of the operator routes (pause/resume the consumer); unset: they answer 401.
    admin_token: SecretStr | None = None

    _token_length = field_validator("admin_token")(checked_admin_token)

    @field_validator("kill_switch_max_cooldown_seconds")
    @classmethod
    def _cooldown_cap(cls, value: float, info: ValidationInfo) -> float:
        if value < info.data.get("kill_switch_cooldown_seconds", 0):
            raise ValueError("must be at least KILL_SWITCH_COOLDOWN_SECONDS")
        return value

    @property
    def kill_switch(self) -> Policy:
        return Policy(self.kill_switch_failure_ratio, self.kill_switch_window_seconds,
                      self.kill_switch_min_messages, self.kill_switch_cooldown_seconds,
                      self.kill_switch_max_cooldown_seconds)

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        if isinstance(value, str):
            try:  # every part a whole number: "1,,5" is a typo, not two delays
                value = tuple(int(part) for part in value.split(","))
            except ValueError:
                raise ValueError("must be comma-separated whole seconds, e.g. 1,5,30") from None
        return value

    @field_validator("retry_delays")
    @classmethod
    def _positive_distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 for d in value) or len(set(value)) != len(value):
            raise ValueError("must be one or more distinct positive whole seconds")
        return value


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], service: str, **overrides: Any) -> S:
    """Build settings from the environment, or exit with one line naming the bad setting."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{str(err['loc'][0]).upper() if err['loc'] else '?'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        print(f"{service}: invalid setting: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
