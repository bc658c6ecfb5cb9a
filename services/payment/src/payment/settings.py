from pydantic import Field

from messaging.settings import OutboxSettings, ServiceSettings


class Settings(ServiceSettings, OutboxSettings):
    port: int = Field(8000, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/payment.db"
