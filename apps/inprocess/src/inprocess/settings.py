"""Settings of the synchronous mode. One process hosts every service, so each service's port
and database get a prefixed variable (PAYMENT_PORT, POINTS_DATABASE_URL, ...); the names and
defaults come from the services' specs (each service's own defaults, docs/design.md section
2). A consuming service's other settings are its own (the mailer's SMTP_HOST, MAIL_FROM, ...).
No broker is read or needed."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, create_model, field_validator
from pydantic_settings import SettingsConfigDict

from messaging import spec
from messaging.chassis.settings import DatabaseUrl, ProcessSettings

SERVICES = spec.names()


class _Settings(ProcessSettings):  # EVENT_LOOP, OTEL_SQL_SPANS as every service has them
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    # The version of OrderPaid payment hands its handlers, as payment's own setting; the
    # dispatcher upcasts version 1, as a consumer does.
    order_paid_version: int = Field(1, ge=1, le=2)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("*")
    @classmethod
    def _ports_distinct(cls, value: Any, info: ValidationInfo) -> Any:
        if not (info.field_name or "").endswith("_port"):
            return value
        taken = {name: port for name, port in info.data.items() if name.endswith("_port")}
        clash = [name for name, port in taken.items() if port == value]
        if clash:
            raise ValueError(f"{value} is already {clash[0].upper()}")
        return value

    def port(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def database_url(self, service: str) -> str:
        return str(getattr(self, f"{service}_database_url"))


def _service_fields() -> dict[str, Any]:
    ports = {f"{s.name}_port": (int, Field(s.port, ge=1, le=65535)) for s in spec.installed()}
    databases = {f"{s.name}_database_url": (DatabaseUrl, s.default_database_url)
                 for s in spec.installed()}
    return ports | databases


Settings = create_model("Settings", __base__=_Settings, **_service_fields())
