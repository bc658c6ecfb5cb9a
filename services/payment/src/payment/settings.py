from pydantic import Field

from messaging.settings import ServiceSettings


class Settings(ServiceSettings):
    port: int = Field(8000, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/payment.db"
    # Fallback poll of the outbox; the relay is woken right after each commit anyway.
    outbox_poll_seconds: float = Field(1.0, gt=0, le=60)
    outbox_batch_size: int = Field(200, ge=1, le=5000)
    # How long published outbox rows are kept (to look at) before they are deleted.
    outbox_retention_hours: float = Field(24 * 7, gt=0)
