"""The console's settings (environment variable = field name upper-cased), checked at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messaging.settings import ServiceSettings


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

    @property
    def edit_and_replay(self) -> bool:
        return self.console_edit_and_replay == "on"
