from email.utils import parseaddr

from pydantic import Field, field_validator

from mailer.message import MailTemplate
from messaging.chassis.settings import ConsumerSettings


class Settings(ConsumerSettings):
    port: int = Field(8002, ge=1, le=65535)
    database_url: str = "sqlite+aiosqlite:///var/mailer.db"
    smtp_host: str = Field("localhost", min_length=1)
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_timeout: float = Field(10.0, gt=0)
    mail_from: str = "Mini EC <shop@mini-ec.test>"

    @field_validator("mail_from")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if "@" not in parseaddr(value)[1]:
            raise ValueError("must be a mail address, e.g. 'Mini EC <shop@example.com>'")
        MailTemplate(value)  # refuses, at start, what could not head a mail (a line break)
        return value
