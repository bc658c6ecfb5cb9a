"""What an HTTP request body may be, checked before the app parses it; errors that stay small.

- A body larger than `max_body_bytes` gets 413 before anything is parsed (a Content-Length
  over the limit is refused unread; a chunked body is counted as it arrives).
- A JSON body must be UTF-8 and parse one way only: duplicated keys, NaN / Infinity,
  numbers out of a float's range and lone surrogates ("\\ud800") are refused with 422
  naming the field.
  Python's json module takes them all silently (last key wins, NaN as a float), and the
  last two cannot even be written back into a 422.
- A 422 names at most `MAX_ERRORS` problems and echoes only short scalar inputs, so its
  size is bounded whatever the request holds.

docs/limits.md lists the limits.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ERRORS = 20
MAX_ECHO_CHARS = 64


class BodyTooLarge(Exception):
    pass


class BodyGuard:
    """Plain ASGI middleware: 413 over the size limit, 422 for ambiguous JSON."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        try:
            body, disconnected = await self._read(receive)
        except BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        if body and _is_json(headers.get("content-type", "")):
            problem = ambiguity(body)
            if problem is not None:
                await JSONResponse({"detail": [problem]}, 422)(scope, receive, send)
                return
        await self.app(scope, _replay(body, disconnected, receive), send)

    async def _read(self, receive: Receive) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body larger than {self.max_body_bytes} bytes"}, 413,
            headers={"connection": "close"},  # the rest of the body is not read
        )
        await response(scope, receive, send)


def _replay(body: bytes, disconnected: bool, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if disconnected:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: only a disconnect can come

    return replay


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class _Pairs(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once."""

    duplicates: list[str]


def _pairs(items: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(items)
    seen: set[str] = set()
    obj.duplicates = []
    for key, _ in items:
        if key in seen:
            obj.duplicates.append(key)
        seen.add(key)
    return obj


class _NotANumber:
    def __init__(self, text: str):
        self.text = text


def ambiguity(body: bytes) -> dict[str, Any] | None:
    """The first way this JSON body can be read more than one way, as a 422 error item.

    None when it parses cleanly, and also when it does not parse at all: that is the app's
    own 422 (json_invalid) to give.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:  # json.loads would raise this, and FastAPI answer 400
        return _error(["body", exc.start], "body is not UTF-8")
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_NotANumber)
    except (ValueError, RecursionError):
        return None
    return _first_problem(value, ["body"])


def _first_problem(value: Any, loc: list[str | int]) -> dict[str, Any] | None:
    if isinstance(value, _NotANumber):
        return _error(loc, f"{value.text} is not a number JSON allows")
    if isinstance(value, float) and not math.isfinite(value):
        return _error(loc, "number is out of range")
    if isinstance(value, str) and not _encodable(value):
        return _error(loc, "string holds a lone surrogate (not valid Unicode)")
    if isinstance(value, list):
        for index, item in enumerate(value):
            if found := _first_problem(item, [*loc, index]):
                return found
    if isinstance(value, _Pairs):
        for key in value.duplicates:
            return _error([*loc, _safe(key)], f"key {_safe(key)!r} appears more than once")
        for key, item in value.items():
            if not _encodable(key):
                return _error(loc, "a key holds a lone surrogate (not valid Unicode)")
            if found := _first_problem(item, [*loc, key]):
                return found
    return None


def _error(loc: list[str | int], msg: str) -> dict[str, Any]:
    return {"type": "json_invalid", "loc": loc, "msg": msg}


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A string fit to echo: valid UTF-8, at most `limit` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "…"


def _safe_loc_part(part: Any) -> str | int:
    return part if isinstance(part, int) else _safe(str(part))


def _echo(value: Any) -> tuple[bool, Any]:
    """(echo it?, the value to echo): short scalars only."""
    if value is None or isinstance(value, bool | int):
        return True, value
    if isinstance(value, float):
        return math.isfinite(value), value
    if isinstance(value, str):
        return True, _safe(value)
    return False, None


def bounded_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as the OpenAPI schema describes them, bounded in size."""
    items = []
    for err in list(errors)[:MAX_ERRORS]:
        item = {"type": err["type"], "loc": [_safe_loc_part(p) for p in err["loc"]],
                "msg": _safe(str(err["msg"]), limit=300)}
        echo, value = _echo(err.get("input"))
        if echo:
            item["input"] = value
        items.append(item)
    return items


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": bounded_errors(exc.errors())}, 422)


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.add_middleware(BodyGuard, max_body_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
