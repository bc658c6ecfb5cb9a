"""The operator routes of a consuming service: see its consumer's kill switch, pause it by
hand (planned maintenance of the mail server) and resume it.

    GET  /consumer          the state (no credentials: /readyz shows the same)
    POST /consumer/pause    {"reason": "..."}: stop taking messages until a resume
    POST /consumer/resume   full speed now

What changes message flow needs credentials and leaves a record of who did it: the POSTs take
`Authorization: Bearer <ADMIN_TOKEN>` (401 without it, and always while ADMIN_TOKEN is not
set) and each attempt, let in or refused, is one line on the `messaging.operator` logger.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which
# name the closure's `operator` dependency.
import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from messaging.chassis.http import problem
from messaging.operations.flow_control import FlowControl

record = logging.getLogger("messaging.operator")

_BEARER = HTTPBearer(auto_error=False, description="ADMIN_TOKEN of the service")
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: problem("No valid `Authorization: Bearer <ADMIN_TOKEN>`, or ADMIN_TOKEN is not set"),
}


class ConsumerState(BaseModel):
    state: str = Field(description="running, paused or probing")
    by: str | None = Field(description="who paused it: switch or operator")
    reason: str
    until: str | None = Field(description="when the kill switch probes next (ISO 8601 UTC)")


class Pause(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
                        description="why, for the log, /readyz and the people after you")


def consumer_router(service: str, flow: FlowControl, token: SecretStr | None) -> APIRouter:
    router = APIRouter(prefix="/consumer", tags=["operations"])

    def operator(request: Request, credentials: Annotated[
            HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> str:
        """The caller, once its token is checked: refused and audited otherwise."""
        who = request.client.host if request.client else "?"
        action = request.url.path
        if token is None or credentials is None or not secrets.compare_digest(
                credentials.credentials.encode(), token.get_secret_value().encode()):
            why = "ADMIN_TOKEN is not set" if token is None else "no valid bearer token"
            record.warning("operator action refused: %s %s from %s: %s", service, action, who, why)
            raise HTTPException(401, f"{why}: operator routes need "
                                     "Authorization: Bearer <ADMIN_TOKEN>",
                                headers={"WWW-Authenticate": "Bearer"})
        return who

    @router.get("", response_model=ConsumerState)
    async def state() -> dict[str, Any]:
        return flow.view()

    @router.post("/pause", response_model=ConsumerState, responses=_UNAUTHORIZED)
    async def pause(body: Pause, who: Annotated[str, Depends(operator)]) -> dict[str, Any]:
        record.warning("operator action: %s consumer paused from %s: %s",
                       service, who, body.reason)
        return await flow.pause(body.reason)

    @router.post("/resume", response_model=ConsumerState, responses=_UNAUTHORIZED)
    async def resume(who: Annotated[str, Depends(operator)]) -> dict[str, Any]:
        record.warning("operator action: %s consumer resumed from %s", service, who)
        return await flow.resume()

    return router
