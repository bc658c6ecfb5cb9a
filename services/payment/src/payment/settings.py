from pydantic import Field

from messaging.chassis.settings import OutboxSettings, ServiceSettings


class Settings(ServiceSettings, OutboxSettings):
    port: int = Field(8000, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/payment.db"
    # The version of OrderPaid it publishes (payment.publishing.ORDER_PAID_VERSIONS): 1 until
    # every consumer reads version 2, then 2 (docs/evolution.md, "The deploy order").
    order_paid_version: int = Field(1, ge=1, le=2)
