"""Settings of the synchronous mode. One process hosts four services, so each service's port
and database get a prefixed variable (PAYMENT_PORT, POINTS_DATABASE_URL, ...); the defaults
are the ones each service has on its own (docs/design.md, section 2). The mail settings are the
mailer's own (SMTP_HOST, SMTP_PORT, SMTP_TIMEOUT, MAIL_FROM). No broker is read or needed."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from messaging.settings import DatabaseUrl

SERVICES = ("payment", "points", "mailer", "audit")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    payment_port: int = Field(8000, ge=1, le=65535)
    points_port: int = Field(8001, ge=1, le=65535)
    mailer_port: int = Field(8002, ge=1, le=65535)
    audit_port: int = Field(8003, ge=1, le=65535)
    payment_database_url: DatabaseUrl = "sqlite+aiosqlite:///var/payment.db"
    points_database_url: DatabaseUrl = "sqlite+aiosqlite:///var/points.db"
    mailer_database_url: DatabaseUrl = "sqlite+aiosqlite:///var/mailer.db"
    audit_database_url: DatabaseUrl = "sqlite+aiosqlite:///var/audit.db"
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("payment_port", "points_port", "mailer_port", "audit_port")
    @classmethod
    def _ports_distinct(cls, value: int, info) -> int:  # type: ignore[no-untyped-def]
        taken = {name: port for name, port in info.data.items() if name.endswith("_port")}
        clash = [name for name, port in taken.items() if port == value]
        if clash:
            raise ValueError(f"{value} is already {clash[0].upper()}")
        return value

    def port(self, service: str) -> int:
        return getattr(self, f"{service}_port")

    def database_url(self, service: str) -> str:
        return getattr(self, f"{service}_database_url")
