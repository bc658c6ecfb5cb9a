"""Hostile HTTP input against a real payment process: bounded bodies, strict JSON, slow clients.

One payment process (SQLite, a throwaway vhost) with short read timeouts and a small
connection cap, so the slow-client tests take seconds; the limits' defaults are in
docs/limits.md. Every hostile request is followed by a valid payment that must succeed.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

pytestmark = pytest.mark.integration

MAX_BODY = 16 * 1024
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def payment(start_payment):
    url, _ = start_payment(HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
                           HTTP_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
                           HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    return url


def valid_body(**changes) -> dict:
    return {"order_id": str(uuid.uuid4()), "customer_id": "alice",
            "email": "alice@example.com", "amount": 1200, "currency": "JPY"} | changes


def assert_still_serving(url: str) -> None:
    response = httpx.post(f"{url}/payments", json=valid_body(), timeout=5)
    assert response.status_code == 201, response.text


def post_raw(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/payments", content=body, timeout=10,
                      headers={"content-type": "application/json", **headers})


# Finding 4: one request took payment down (no body limit, a 422 echoing the input).

def test_a_body_over_the_limit_gets_413_before_it_is_parsed(payment):
    hostile = json.dumps({f"k{i}": 1 for i in range(600_000)}).encode()  # 7.9 MiB
    started = time.monotonic()
    response = post_raw(payment, hostile)
    assert response.status_code == 413
    assert len(response.content) < 200
    assert time.monotonic() - started < 2
    assert httpx.get(f"{payment}/healthz", timeout=2).status_code == 200
    assert_still_serving(payment)


def test_a_chunked_body_over_the_limit_gets_413(payment):
    def chunks():
        for _ in range(100):
            yield b"[" + b"1," * 1000 + b"1]"

    response = httpx.post(f"{payment}/payments", content=chunks(), timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert_still_serving(payment)


def test_a_422_for_many_unknown_keys_stays_small(payment):
    body = valid_body() | {f"unknown-{i}-" + "x" * 20: "y" * 50 for i in range(150)}
    raw = json.dumps(body).encode()
    assert len(raw) < MAX_BODY
    response = post_raw(payment, raw)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert 1 <= len(detail) <= 20
    assert len(response.content) < 4096


# Finding 5: NaN, Infinity, 1e400 and a lone surrogate answered 500.

@pytest.mark.parametrize(("field", "raw_value"), [
    ("amount", b"NaN"), ("amount", b"Infinity"), ("amount", b"-Infinity"), ("amount", b"1e400"),
    ("customer_id", b'"\\ud800"'), ("email", b'"a\\udfff@example.com"'),
])
def test_a_value_json_cannot_round_trip_gets_422_naming_the_field(payment, field, raw_value):
    body = json.dumps(valid_body(**{field: "PLACEHOLDER"})).encode()
    body = body.replace(b'"PLACEHOLDER"', raw_value)
    response = post_raw(payment, body)
    assert response.status_code == 422, response.text
    assert ["body", field] in [err["loc"] for err in response.json()["detail"]]
    assert_still_serving(payment)


def test_a_lone_surrogate_in_an_unknown_key_gets_422(payment):
    body = json.dumps(valid_body()).encode()[:-1] + b', "\\ud800": 1}'
    response = post_raw(payment, body)
    assert response.status_code == 422, response.text
    response.content.decode("utf-8")  # the answer itself is valid UTF-8


# Finding 9 (HTTP): duplicated keys were taken silently (the last one won).

def test_a_duplicated_key_is_refused_naming_it(payment):
    good = valid_body()
    body = json.dumps(good).encode()[:-1] + b', "amount": 1}'
    response = post_raw(payment, body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "amount"] and "more than once" in error["msg"]
    assert httpx.get(f"{payment}/payments/{uuid.uuid4()}", timeout=5).status_code == 404


def test_a_duplicated_key_in_a_nested_object_is_refused_too(payment):
    body = b'{"order_id": "x", "nested": {"a": 1, "a": 2}}'
    response = post_raw(payment, body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "nested", "a"]


def test_a_reused_idempotency_key_gets_a_422_shaped_like_every_other(payment):
    key = f"key-{uuid.uuid4()}"
    first = valid_body()
    assert httpx.post(f"{payment}/payments", json=first, headers={"Idempotency-Key": key},
                      timeout=5).status_code == 201
    response = httpx.post(f"{payment}/payments", json=first | {"amount": 999},
                          headers={"Idempotency-Key": key}, timeout=5)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert error["type"] == "idempotency_key_reused" and "Idempotency-Key" in error["msg"]


def test_the_openapi_document_lists_every_status_the_api_answers(payment):
    doc = httpx.get(f"{payment}/openapi.json", timeout=5).json()
    paths = doc["paths"]
    assert {"201", "409", "413", "422"} <= set(paths["/payments"]["post"]["responses"])
    assert {"200", "404"} <= set(paths["/payments/{payment_id}"]["get"]["responses"])
    assert {"200", "404", "409"} <= set(paths["/payments/{payment_id}/refund"]["post"]["responses"])
    assert {"200", "503"} <= set(paths["/readyz"]["get"]["responses"])
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


# Finding 8: slow clients held connections open without limit.

def _connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True once the server closes the connection (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_client_sending_headers_a_byte_at_a_time_is_disconnected(payment):
    sock = _connect(payment)
    started = time.monotonic()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    closed = False
    for byte in request:
        try:
            sock.send(bytes([byte]))
        except OSError:
            closed = True
            break
        if _closed_by_server(sock, 0.2):
            closed = True
            break
    assert closed or _closed_by_server(sock, HEADER_TIMEOUT + 2)
    assert time.monotonic() - started < HEADER_TIMEOUT + 3
    sock.close()
    assert_still_serving(payment)


def test_a_client_that_never_finishes_its_body_is_disconnected(payment):
    sock = _connect(payment)
    sock.sendall(b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 500\r\n\r\n{\"order_id\"")
    started = time.monotonic()
    assert _closed_by_server(sock, BODY_TIMEOUT + 3)
    assert time.monotonic() - started < BODY_TIMEOUT + 3
    sock.close()


def test_connections_beyond_the_cap_are_closed_and_idle_ones_expire(payment):
    idle = [_connect(payment) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        # Past the client's share its older idle ones make room (closed at once); all of
        # them by the header deadline (tests/api/test_connection_slots_http.py: the rest).
        started = time.monotonic()
        assert all(_closed_by_server(s, HEADER_TIMEOUT + 3) for s in idle)
        assert time.monotonic() - started < HEADER_TIMEOUT + 4
    finally:
        for s in idle:
            s.close()
    assert_still_serving(payment)


def test_a_keep_alive_client_slow_with_its_second_request_is_disconnected(payment):
    sock = _connect(payment)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # ...and the rest never comes
    assert _closed_by_server(sock, HEADER_TIMEOUT + 3)
    sock.close()
