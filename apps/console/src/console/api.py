"""The console's JSON API: the same operations as the pages, for tests and scripts.

Every route needs the console's credentials (401 otherwise). A POST here takes a JSON body,
which a page of another site cannot make a browser send without asking first (CORS), so
the API needs no CSRF token; the pages' form posts carry one.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from console import alerts, consumers, edit, store
from console.auth import User
from console.replay import Replayer
from messaging.chassis.http import problem
from messaging.operations.admin import ConsumerState, Pause

Status = Literal["parked", "replaying", "replayed", "archived"]


class DeadLetter(BaseModel):
    id: int
    service: str
    queue: str
    event_id: str
    event_type: str
    order_id: str | None
    correlation_id: str | None
    error_class: str
    error_type: str
    error_message: str
    first_failed_at: datetime
    last_failed_at: datetime
    replay_count: int
    status: Status


class DeadLetterDetail(DeadLetter):
    headers: dict[str, Any]
    body: str = Field(description="the body as text (UTF-8; undecodable bytes replaced)")
    body_base64: str
    group: str
    last_replayed_at: datetime | None
    traceparent: str | None


class Group(BaseModel):
    id: str
    service: str
    error_class: str
    error_type: str
    event_type: str
    title: str
    count: int
    first_failed_at: datetime
    last_failed_at: datetime
    last_replayed_at: datetime | None
    status: Status
    counts: dict[str, int]


class ReplayRequest(BaseModel):
    rate_per_second: float = Field(10, gt=0, le=1000)
    batch: int = Field(10, ge=1, le=1000)


class ReplayStarted(BaseModel):
    replay_id: int
    count: int


class Replay(BaseModel):
    id: int
    target: str
    user: str
    rate_per_second: float
    batch: int
    total: int
    done: int
    status: str
    error: str | None
    started_at: datetime
    ended_at: datetime | None


class Archived(BaseModel):
    count: int


class EditRequest(BaseModel):
    body: str = Field(description="the edited event, JSON text")


class FiringAlert(BaseModel):
    name: str
    severity: str
    service: str
    since: datetime | None
    summary: str


class AlertsView(BaseModel):
    connected: bool = Field(description="false: no PROMETHEUS_URL is set")
    problem: str | None = Field(description="why Prometheus gave no answer (else null)")
    firing: list[FiringAlert]


class ConsumerView(BaseModel):
    service: str
    url: str
    state: str | None = Field(description="running, paused or probing; null: not reachable")
    by: str | None = Field(description="who paused it: switch or operator")
    reason: str
    until: str | None = Field(description="when the kill switch probes next (ISO 8601 UTC)")
    problem: str | None = Field(description="why the state is unknown (else null)")


class AuditRecord(BaseModel):
    at: datetime
    user: str
    action: str
    target: str
    detail: str


def aware(when: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC (the store keeps UTC)."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _replayer(request: Request) -> Replayer:
    replayer: Replayer = request.app.state.replayer
    return replayer


def _sessions(request: Request) -> store.Sessions:
    sessions: store.Sessions = request.app.state.sessions
    return sessions


def detail_of(row: dict[str, Any]) -> DeadLetterDetail:
    return DeadLetterDetail(
        **{k: row[k] for k in DeadLetter.model_fields},
        headers=row["headers"], body=row["body"].decode("utf-8", "replace"),
        body_base64=base64.b64encode(row["body"]).decode(), group=row["fingerprint"],
        last_replayed_at=row["last_replayed_at"], traceparent=row["traceparent"])


async def archive_group(sessions: store.Sessions, fingerprint: str, user: str) -> int:
    async with sessions() as session, session.begin():
        ids = await store.ids_in_group_in(session, fingerprint)
        count = await store.archive(session, ids)
        await store.record(session, user, "archive-group", f"group {fingerprint}",
                           f"{count} dead letter(s) archived")
    return count


async def archive_one(sessions: store.Sessions, dead_letter_id: int, user: str) -> int:
    async with sessions() as session, session.begin():
        count = await store.archive(session, [dead_letter_id])
        await store.record(session, user, "archive", f"dead letter {dead_letter_id}",
                           "archived" if count else "not archived: being replayed")
    return count


async def replay_group(request: Request, fingerprint: str, user: str,
                       rate: float, batch: int) -> ReplayStarted:
    ids = await store.ids_in_group(_sessions(request), fingerprint, store.REPLAYABLE)
    job, count = await _replayer(request).start(
        ids, user=user, target=f"group {fingerprint}", rate=rate, batch=batch,
        action="replay-group")
    return ReplayStarted(replay_id=job, count=count)


async def replay_one(request: Request, dead_letter_id: int, user: str) -> ReplayStarted:
    if await store.get_dead_letter(_sessions(request), dead_letter_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
    job, count = await _replayer(request).start(
        [dead_letter_id], user=user, target=f"dead letter {dead_letter_id}",
        rate=request.app.state.settings.console_replay_rate, batch=1, action="replay")
    return ReplayStarted(replay_id=job, count=count)


async def edit_and_replay(request: Request, dead_letter_id: int, user: str,
                          body: bytes) -> ReplayStarted:
    """403 while the setting is off; 422 naming the field when the body breaks the contract
    or changes the event id; else the body is replaced, the diff recorded, and it is
    replayed."""
    if not request.app.state.settings.edit_and_replay:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "edit & replay is off (CONSOLE_EDIT_AND_REPLAY=on turns it on)")
    sessions = _sessions(request)
    row = await store.get_dead_letter(sessions, dead_letter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
    try:
        edit.check_edit(row["event_id"], body)
    except edit.EditRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    if row["status"] not in store.REPLAYABLE:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"dead letter {dead_letter_id} is {row['status']}")
    async with sessions() as session, session.begin():
        await store.replace_body(session, dead_letter_id, body)
        await store.record(session, user, "edit", f"dead letter {dead_letter_id}",
                           edit.diff(row["body"], body))
    job, count = await _replayer(request).start(
        [dead_letter_id], user=user, target=f"dead letter {dead_letter_id}",
        rate=request.app.state.settings.console_replay_rate, batch=1,
        action="edit-and-replay")
    return ReplayStarted(replay_id=job, count=count)


async def steer_consumer(request: Request, service: str, user: str, action: consumers.Action,
                         reason: str | None = None) -> dict[str, Any]:
    """Pause or resume a service's consumer through its operator route; the attempt and its
    outcome go into the audit trail. 404 for a service the console does not know, 409
    without ADMIN_TOKEN, 502 when the service is not reachable or refuses."""
    settings = request.app.state.settings
    url = settings.service_urls.get(service)
    if url is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"no consumer {service!r} (CONSOLE_SERVICE_URLS names "
                            f"{', '.join(settings.service_urls) or 'none'})")
    if settings.admin_token is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "ADMIN_TOKEN is not set: the console "
                                                      "shows the consumers but cannot steer them")
    failed: consumers.SteerFailed | None = None
    try:
        state = await consumers.steer(url, action, settings.admin_token.get_secret_value(),
                                      reason)
        outcome = f"now {state['state']}"
    except consumers.SteerFailed as exc:
        failed, outcome = exc, f"failed: {exc}"
    async with _sessions(request)() as session, session.begin():
        await store.record(session, user, f"{action}-consumer", f"consumer {service}",
                           f"reason: {reason}; {outcome}" if reason else outcome)
    if failed is not None:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"{service}: {failed}")
    return state


def router() -> APIRouter:
    r = APIRouter(prefix="/api", tags=["console"], responses={
        401: problem("No or wrong credentials (HTTP Basic)")})

    @r.get("/dead-letters", response_model=list[DeadLetter])
    async def list_dead_letters(
        request: Request, user: User, service: str | None = None,
        error_class: str | None = None, event_type: str | None = None,
        order_id: str | None = None, correlation_id: str | None = None,
        status: Status | None = None, group: str | None = None,
        failed_after: datetime | None = None, failed_before: datetime | None = None,
        limit: int = Query(500, ge=1, le=5000),
    ) -> list[dict[str, Any]]:
        filters = store.Filters(service, error_class, event_type, order_id, correlation_id,
                                status, group, aware(failed_after), aware(failed_before))
        return await store.list_dead_letters(_sessions(request), filters, limit)

    @r.get("/dead-letters/{dead_letter_id}", response_model=DeadLetterDetail,
           responses={404: problem("No such dead letter")})
    async def get_dead_letter(request: Request, user: User,
                              dead_letter_id: int) -> DeadLetterDetail:
        row = await store.get_dead_letter(_sessions(request), dead_letter_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
        return detail_of(row)

    @r.post("/dead-letters/{dead_letter_id}/replay", response_model=ReplayStarted,
            status_code=202, responses={404: problem("No such dead letter")})
    async def replay_dead_letter(request: Request, user: User,
                                 dead_letter_id: int) -> ReplayStarted:
        return await replay_one(request, dead_letter_id, user)

    @r.post("/dead-letters/{dead_letter_id}/archive", response_model=Archived,
            responses={404: problem("No such dead letter")})
    async def archive_dead_letter(request: Request, user: User,
                                  dead_letter_id: int) -> Archived:
        if await store.get_dead_letter(_sessions(request), dead_letter_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
        return Archived(count=await archive_one(_sessions(request), dead_letter_id, user))

    @r.post("/dead-letters/{dead_letter_id}/edit-and-replay", response_model=ReplayStarted,
            status_code=202, responses={
                403: problem("Edit & replay is off"), 404: problem("No such dead letter"),
                409: problem("Not replayable now (being replayed, or archived)"),
                422: problem("The edited body breaks the contract (the field is named)")})
    async def edit_dead_letter(request: Request, user: User, dead_letter_id: int,
                               edited: EditRequest) -> ReplayStarted:
        return await edit_and_replay(request, dead_letter_id, user, edited.body.encode())

    @r.get("/groups", response_model=list[Group])
    async def list_groups(request: Request, user: User) -> list[dict[str, Any]]:
        return await store.groups(_sessions(request))

    @r.post("/groups/{group_id}/replay", response_model=ReplayStarted, status_code=202,
            responses={404: problem("No such group")})
    async def replay_group_route(request: Request, user: User, group_id: str,
                                 replay: ReplayRequest) -> ReplayStarted:
        await _existing_group(request, group_id)
        return await replay_group(request, group_id, user, replay.rate_per_second,
                                  replay.batch)

    @r.post("/groups/{group_id}/archive", response_model=Archived,
            responses={404: problem("No such group")})
    async def archive_group_route(request: Request, user: User, group_id: str) -> Archived:
        await _existing_group(request, group_id)
        return Archived(count=await archive_group(_sessions(request), group_id, user))

    @r.get("/replays/{replay_id}", response_model=Replay,
           responses={404: problem("No such replay")})
    async def get_replay(request: Request, user: User, replay_id: int) -> dict[str, Any]:
        job = await store.get_replay_job(_sessions(request), replay_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no replay {replay_id}")
        return job

    @r.post("/replays/{replay_id}/stop", response_model=Replay,
            responses={404: problem("No such replay"), 409: problem("Not running")})
    async def stop_replay(request: Request, user: User, replay_id: int) -> dict[str, Any]:
        return await stop(request, replay_id, user)

    @r.get("/alerts", response_model=AlertsView)
    async def firing_alerts(request: Request, user: User) -> alerts.Alerts:
        return await alerts.read_alerts(request.app.state.settings.prometheus_url)

    steer_errors: dict[int | str, dict[str, Any]] = {
        404: problem("No such consumer in CONSOLE_SERVICE_URLS"),
        409: problem("ADMIN_TOKEN is not set"),
        502: problem("The service is not reachable, or refused the token")}

    @r.get("/consumers", response_model=list[ConsumerView])
    async def list_consumers(request: Request, user: User) -> list[dict[str, Any]]:
        found = await consumers.states(request.app.state.settings.service_urls)
        return [asdict(c) for c in found]

    @r.post("/consumers/{service}/pause", response_model=ConsumerState, responses=steer_errors)
    async def pause_consumer(request: Request, user: User, service: str,
                             pause: Pause) -> dict[str, Any]:
        return await steer_consumer(request, service, user, "pause", pause.reason)

    @r.post("/consumers/{service}/resume", response_model=ConsumerState,
            responses=steer_errors)
    async def resume_consumer(request: Request, user: User, service: str) -> dict[str, Any]:
        return await steer_consumer(request, service, user, "resume")

    @r.get("/audit", response_model=list[AuditRecord])
    async def audit_trail(request: Request, user: User) -> list[dict[str, Any]]:
        return await store.audit_trail(_sessions(request))

    return r


async def _existing_group(request: Request, group_id: str) -> None:
    if not await store.ids_in_group(_sessions(request), group_id, store.STATUSES):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no group {group_id}")


async def stop(request: Request, replay_id: int, user: str) -> dict[str, Any]:
    sessions = _sessions(request)
    job = await store.get_replay_job(sessions, replay_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no replay {replay_id}")
    if not _replayer(request).stop(replay_id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"replay {replay_id} is {job['status']}")
    async with sessions() as session, session.begin():
        await store.record(session, user, "stop-replay", f"replay {replay_id}",
                           f"stopped after {job['done']} of {job['total']}")
    return job
