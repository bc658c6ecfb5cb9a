"""The console's settings (environment variable = field name upper-cased), checked at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from messaging.chassis.settings import ServiceSettings, checked_admin_token

_SERVICE_URL = r"[a-z][a-z0-9-]*=https?://[^\s,=]+"


class Settings(ServiceSettings):
    port: int = Field(8005, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/console.db"
    # Who may use the console (HTTP Basic). No default: a console nobody set a password for
    # does not start.
    console_user: str = Field(min_length=1, max_length=64, pattern=r"^[^:\s]+$")
    console_password: str = Field(min_length=8, max_length=256)
    # Edit & replay changes what a service will apply: off unless turned on.
    console_edit_and_replay: Literal["on", "off"] = "off"
    # Replayed and archived dead letters are deleted this long after their last failure;
    # parked ones are kept until someone acts on them.
    console_retention_days: float = Field(30, gt=0)
    # Replay defaults (a request may choose its own within the limits of api.ReplayRequest).
    console_replay_rate: float = Field(10, gt=0, le=1000)
    console_replay_batch: int = Field(10, ge=1, le=1000)
    # Dead letters taken from the DLQs per transaction (each acked after its commit).
    console_ingest_batch: int = Field(200, ge=1, le=1000)
    # The consuming services whose DLQs it takes, comma-separated (their work queue is
    # `<service>.events`, docs/design.md). Empty: every consuming service installed beside
    # it (make run); an image with the console alone names them (docker-compose.yml).
    console_services: str = Field("", pattern=r"^([a-z][a-z0-9-]*(,[a-z][a-z0-9-]*)*)?$")
    # Where a dead letter's trace opens (its traceparent's trace id).
    jaeger_ui_url: str = "http://127.0.0.1:16686"
    # The Prometheus whose firing alerts the overview shows (its /api/v1/alerts); empty:
    # the overview says alerts are not connected.
    prometheus_url: str = Field("", pattern=r"^(https?://[^\s/]+(/\S*)?)?$")
    # The consuming services whose consumer (kill switch) the console shows and steers:
    # `name=base URL`, comma-separated (make run: the native ports; compose: the service
    # names). Empty: the consumers page says none is configured.
    console_service_urls: str = Field("", pattern=rf"^({_SERVICE_URL}(,{_SERVICE_URL})*)?$")
    # The consumers' ADMIN_TOKEN (their pause and resume routes); unset: the console shows
    # the consumers but cannot steer them.
    admin_token: SecretStr | None = None

    _token_length = field_validator("admin_token")(checked_admin_token)

    @field_validator("console_service_urls")
    @classmethod
    def _one_url_per_service(cls, value: str) -> str:
        names = [pair.partition("=")[0] for pair in value.split(",") if pair]
        if len(names) != len(set(names)):
            raise ValueError("names a service twice")
        return value

    @property
    def service_urls(self) -> dict[str, str]:
        pairs = (p.partition("=") for p in self.console_service_urls.split(",") if p)
        return {name: url.rstrip("/") for name, _, url in pairs}

    @property
    def edit_and_replay(self) -> bool:
        return self.console_edit_and_replay == "on"
