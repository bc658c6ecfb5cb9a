"""A small client of Mailpit's API v1: the mails sent to an address, and a mail's headers.

Shapes: Mailpit's documented API v1 (axllent/mailpit, `docs/apiv1/Messages.md` and its swagger):
`GET /api/v1/search?query=...` answers `{"total", "unread", "count", "messages_count",
"messages_unread", "start", "tags", "messages": [{"ID", "MessageID", "From": {"Name",
"Address"}, "To": [...], "Subject", "Created", "Tags", "Size", "Attachments", ...}]}`;
`GET /api/v1/message/{ID}/headers` answers `{"Header-Name": ["value", ...]}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Mail:
    id: str
    message_id: str
    to: tuple[str, ...]
    subject: str


def mails_of(payload: dict) -> list[Mail]:
    return [
        Mail(
            id=m["ID"],
            message_id=m.get("MessageID", ""),
            to=tuple(a["Address"] for a in m.get("To") or []),
            subject=m.get("Subject", ""),
        )
        for m in payload.get("messages") or []
    ]


class Mailpit:
    def __init__(self, base_url: str, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=10)

    def close(self) -> None:
        self._client.close()

    def search(self, query: str) -> list[Mail]:
        response = self._client.get("/api/v1/search", params={"query": query})
        response.raise_for_status()
        return mails_of(response.json())

    def mails_to(self, address: str) -> list[Mail]:
        """Mails addressed to exactly `address` (Mailpit's `to:` is a substring match)."""
        return [m for m in self.search(f"to:{address}") if address in m.to]

    def headers(self, mail_id: str) -> dict[str, list[str]]:
        response = self._client.get(f"/api/v1/message/{mail_id}/headers")
        response.raise_for_status()
        return response.json()
