from pydantic import Field

from messaging.chassis.settings import ConsumerSettings, OutboxSettings


class Settings(ConsumerSettings, OutboxSettings):
    """Points' settings, and the outbox relay's: shipping publishes OrderShipped."""

    port: int = Field(8004, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/shipping.db"
    carrier: str = Field("Mini Post", min_length=1, max_length=64)
