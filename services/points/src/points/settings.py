from pydantic import Field

from messaging.chassis.settings import ConsumerSettings


class Settings(ConsumerSettings):
    port: int = Field(8001, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/points.db"
