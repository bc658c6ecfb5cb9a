"""Who may use the console: HTTP Basic credentials on every page and API call, and a CSRF
token on every form post (a browser sends Basic credentials with any request to the site,
also one another site's page makes it send)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

REALM = "Mini EC console"
_basic = HTTPBasic(realm=REALM, auto_error=False)


class Guard:
    """Checks credentials against one user and password, and makes and checks CSRF tokens
    (an HMAC of the user name under a key made at start: a restart invalidates open forms)."""

    def __init__(self, user: str, password: str):
        self._user, self._password = user.encode(), password.encode()
        self._key = secrets.token_bytes(32)

    def user(self, credentials: HTTPBasicCredentials | None) -> str:
        """The user name, or 401 asking for Basic credentials."""
        if credentials is not None:
            right_user = hmac.compare_digest(credentials.username.encode(), self._user)
            right_password = hmac.compare_digest(credentials.password.encode(), self._password)
            if right_user and right_password:
                return credentials.username
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "credentials required",
                            headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})

    def csrf_token(self, user: str) -> str:
        return hmac.new(self._key, f"csrf:{user}".encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, user: str, token: str | None) -> None:
        if not token or not hmac.compare_digest(token, self.csrf_token(user)):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "missing or wrong CSRF token: reload the page and try again")


def guard_of(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


def current_user(request: Request,
                 credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> str:
    return guard_of(request).user(credentials)


User = Annotated[str, Depends(current_user)]


def docs_router() -> APIRouter:
    """`/openapi.json` and `/docs`, behind the same credentials as everything else."""
    r = APIRouter(include_in_schema=False)

    @r.get("/openapi.json")
    async def openapi(request: Request, user: User) -> dict[str, Any]:
        document: dict[str, Any] = request.app.openapi()
        return document

    @r.get("/docs", response_class=HTMLResponse)
    async def docs(user: User) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Mini EC console API")

    return r
