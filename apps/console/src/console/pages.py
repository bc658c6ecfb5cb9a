"""The console's pages: server-rendered (Jinja2), HTMX for the few live parts, no build chain.

Every page needs the console's credentials; every form post carries the page's CSRF token.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import ValidationError

from console import alerts, api, consumers, store
from console.auth import User, guard_of
from messaging.operations.admin import Pause

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _trace_id(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _render(request: Request, user: str, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {
        "user": user, "csrf_token": guard_of(request).csrf_token(user),
        "edit_enabled": request.app.state.settings.edit_and_replay, **context})


def _back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


Csrf = Annotated[str | None, Form()]


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    async def overview(request: Request, user: User) -> HTMLResponse:
        sessions = request.app.state.sessions
        counts = await store.parked_counts(sessions)
        return _render(request, user, "overview.html", counts=counts,
                       total=sum(c for _, _, c in counts),
                       missing=request.app.state.ingest.missing,
                       replays=await store.replay_jobs(sessions, 10),
                       alerts=await alerts.read_alerts(
                           request.app.state.settings.prometheus_url))

    @r.get("/groups", response_class=HTMLResponse)
    async def groups(request: Request, user: User) -> HTMLResponse:
        return _render(request, user, "groups.html",
                       groups=await store.groups(request.app.state.sessions),
                       settings=request.app.state.settings)

    @r.post("/groups/{group_id}/replay")
    async def replay_group(request: Request, user: User, group_id: str, csrf_token: Csrf = None,
                           rate_per_second: Annotated[float, Form(gt=0, le=1000)] = 10,
                           batch: Annotated[int, Form(ge=1, le=1000)] = 10) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        await api.replay_group(request, group_id, user, rate_per_second, batch)
        return _back("/groups")

    @r.post("/groups/{group_id}/archive")
    async def archive_group(request: Request, user: User, group_id: str,
                            csrf_token: Csrf = None) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        await api.archive_group(request.app.state.sessions, group_id, user)
        return _back("/groups")

    @r.get("/dead-letters", response_class=HTMLResponse)
    async def dead_letters(
        request: Request, user: User, service: str | None = None,
        error_class: str | None = None, event_type: str | None = None,
        order_id: str | None = None, correlation_id: str | None = None,
        status: str | None = None, group: str | None = None,
        failed_after: str | None = None, failed_before: str | None = None,
    ) -> HTMLResponse:
        filters = store.Filters(service or None, error_class or None, event_type or None,
                                order_id or None, correlation_id or None, status or None,
                                group or None, _when(failed_after), _when(failed_before))
        rows = await store.list_dead_letters(request.app.state.sessions, filters)
        return _render(request, user, "dead_letters.html", rows=rows, filters=filters,
                       statuses=store.STATUSES)

    @r.post("/dead-letters/bulk")
    async def bulk(request: Request, user: User, csrf_token: Csrf = None,
                   action: Annotated[str, Form()] = "",
                   ids: Annotated[list[int] | None, Form()] = None) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        chosen = ids or []
        settings = request.app.state.settings
        if action == "replay":
            await request.app.state.replayer.start(
                chosen, user=user, target=f"{len(chosen)} dead letter(s)",
                rate=settings.console_replay_rate, batch=settings.console_replay_batch,
                action="replay-selected")
        elif action == "archive":
            async with request.app.state.sessions() as session, session.begin():
                count = await store.archive(session, chosen)
                await store.record(session, user, "archive-selected",
                                   f"{len(chosen)} dead letter(s)", f"{count} archived")
        else:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                                "action must be replay or archive")
        return _back(request.headers.get("referer") or "/dead-letters")

    @r.get("/dead-letters/{dead_letter_id}", response_class=HTMLResponse)
    async def dead_letter(request: Request, user: User, dead_letter_id: int) -> HTMLResponse:
        row = await store.get_dead_letter(request.app.state.sessions, dead_letter_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
        trace_id = _trace_id(row["traceparent"])
        jaeger = request.app.state.settings.jaeger_ui_url.rstrip("/")
        return _render(request, user, "dead_letter.html", row=row,
                       body=_pretty(row["body"]),
                       headers=json.dumps(row["headers"], indent=2, sort_keys=True),
                       deaths=row["headers"].get("x-death") or [],
                       trace_url=f"{jaeger}/trace/{quote(trace_id)}" if trace_id else None)

    @r.post("/dead-letters/{dead_letter_id}/replay")
    async def replay_one(request: Request, user: User, dead_letter_id: int,
                         csrf_token: Csrf = None) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        await api.replay_one(request, dead_letter_id, user)
        return _back(f"/dead-letters/{dead_letter_id}")

    @r.post("/dead-letters/{dead_letter_id}/archive")
    async def archive_one(request: Request, user: User, dead_letter_id: int,
                          csrf_token: Csrf = None) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        await api.archive_one(request.app.state.sessions, dead_letter_id, user)
        return _back(f"/dead-letters/{dead_letter_id}")

    @r.post("/dead-letters/{dead_letter_id}/edit-and-replay")
    async def edit_one(request: Request, user: User, dead_letter_id: int,
                       body: Annotated[str, Form()], csrf_token: Csrf = None
                       ) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        await api.edit_and_replay(request, dead_letter_id, user, body.encode())
        return _back(f"/dead-letters/{dead_letter_id}")

    @r.get("/consumers", response_class=HTMLResponse)
    async def consumer_list(request: Request, user: User) -> HTMLResponse:
        settings = request.app.state.settings
        return _render(request, user, "consumers.html",
                       consumers=await consumers.states(settings.service_urls),
                       can_steer=settings.admin_token is not None)

    @r.post("/consumers/{service}/pause")
    async def pause_consumer(request: Request, user: User, service: str,
                             reason: Annotated[str, Form()] = "",
                             csrf_token: Csrf = None) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        try:
            checked = Pause(reason=reason)
        except ValidationError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                                f"reason: {exc.errors()[0]['msg']}") from None
        await api.steer_consumer(request, service, user, "pause", checked.reason)
        return _back("/consumers")

    @r.post("/consumers/{service}/resume")
    async def resume_consumer(request: Request, user: User, service: str,
                              csrf_token: Csrf = None) -> RedirectResponse:
        guard_of(request).check_csrf(user, csrf_token)
        await api.steer_consumer(request, service, user, "resume")
        return _back("/consumers")

    @r.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request, user: User) -> HTMLResponse:
        return _render(request, user, "audit.html",
                       records=await store.audit_trail(request.app.state.sessions))

    return r


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return api.aware(datetime.fromisoformat(text))
    except ValueError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                            f"not a date and time: {text[:40]!r}") from None


_JSON_TOKEN = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)'
                         r'|\b(true|false|null)\b')


def highlight_json(text: str) -> Markup:
    """Indented JSON with its keys, strings, numbers and literals in spans (escaped HTML)."""
    out, last = [], 0
    for match in _JSON_TOKEN.finditer(text):
        out.append(escape(text[last:match.start()]))
        string, colon, number, literal = match.groups()
        if string is not None:
            kind = "key" if colon else "string"
            out.append(Markup('<span class="{}">{}</span>{}').format(kind, string, colon or ""))
        else:
            out.append(Markup('<span class="{}">{}</span>').format(
                "number" if number else "literal", number or literal))
        last = match.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def _pretty(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")


def install(app: FastAPI) -> None:
    templates.env.filters["highlight_json"] = highlight_json
    app.include_router(router())
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
