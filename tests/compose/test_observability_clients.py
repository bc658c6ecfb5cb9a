"""The Jaeger and Mailpit clients of `make test-compose`, against recorded API responses.

No Jaeger or Mailpit runs here, so each client talks to an httpx transport that answers with
a fixture of the real API's documented shape (tests/compose/fixtures/README.md says where
each shape comes from) and records what the client asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from devstack.jaeger import Jaeger, TraceQueryError
from devstack.mailpit import Mailpit

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).with_name("fixtures")


def recorded(status: int, fixture: str, seen: list[httpx.Request]) -> httpx.Client:
    body = (FIXTURES / fixture).read_bytes()

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    return httpx.Client(base_url="http://jaeger.test", transport=httpx.MockTransport(answer))


def test_jaeger_returns_only_the_trace_carrying_the_correlation_id():
    seen: list[httpx.Request] = []
    jaeger = Jaeger("http://jaeger.test", client=recorded(200, "jaeger_find_traces.json", seen))

    spans = jaeger.trace_by_correlation_id("tour-7f3c9a")

    assert {s.trace_id for s in spans} == {"5b8aa5a2d2c872e8321cf37308d69df2"}
    assert {s.service for s in spans} == {"payment", "points", "mailer", "audit"}
    assert {"POST /payments", "outbox relay", "smtp send"} <= {s.name for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert [(r.service, r.name) for r in roots] == [("payment", "POST /payments")]
    assert all(s.attributes["mini_ec.correlation_id"] == "tour-7f3c9a" for s in spans)
    assert next(s for s in spans if s.name == "smtp send").attributes["server.port"] == 1025


def test_jaeger_asks_for_the_service_a_time_window_and_the_attribute():
    seen: list[httpx.Request] = []
    jaeger = Jaeger("http://jaeger.test", client=recorded(200, "jaeger_find_traces.json", seen))

    jaeger.trace_by_correlation_id("tour-7f3c9a")

    (request,) = seen
    assert request.url.path == "/api/v3/traces"
    params = request.url.params
    assert params["query.service_name"] == "payment"
    assert params["query.start_time_min"] < params["query.start_time_max"]
    assert params["query.start_time_min"].endswith("Z")
    assert json.loads(params["query.attributes"]) == {"mini_ec.correlation_id": "tour-7f3c9a"}


def test_jaeger_404_means_no_trace_yet():
    seen: list[httpx.Request] = []
    jaeger = Jaeger("http://jaeger.test", client=recorded(404, "jaeger_no_traces.json", seen))
    assert jaeger.trace_by_correlation_id("not-there") == []


def test_jaeger_any_other_error_is_raised_with_its_message():
    seen: list[httpx.Request] = []
    jaeger = Jaeger("http://jaeger.test", client=recorded(400, "jaeger_bad_request.json", seen))
    with pytest.raises(TraceQueryError, match="400.*malformed parameter"):
        jaeger.trace_by_correlation_id("tour-7f3c9a")


def test_a_trace_without_the_correlation_id_is_not_returned():
    seen: list[httpx.Request] = []
    jaeger = Jaeger("http://jaeger.test", client=recorded(200, "jaeger_find_traces.json", seen))
    assert jaeger.trace_by_correlation_id("someone-else") == []


def test_mailpit_finds_mails_to_exactly_the_address():
    seen: list[httpx.Request] = []
    mailpit = Mailpit("http://mailpit.test", client=recorded(200, "mailpit_search.json", seen))

    mails = mailpit.mails_to("alice-7f3c@example.com")

    assert [(m.id, m.to, m.subject) for m in mails] == [
        ("Jw5Zi3ms6vYBYuyRfZ3XyC", ("alice-7f3c@example.com",), "Thank you for your order")
    ]
    (request,) = seen
    assert request.url.path == "/api/v1/search"
    assert request.url.params["query"] == "to:alice-7f3c@example.com"


def test_mailpit_no_match_is_an_empty_list():
    seen: list[httpx.Request] = []
    client = recorded(200, "mailpit_search_empty.json", seen)
    mailpit = Mailpit("http://mailpit.test", client=client)
    assert mailpit.mails_to("nobody@example.com") == []


def test_mailpit_reads_a_mails_headers():
    seen: list[httpx.Request] = []
    mailpit = Mailpit("http://mailpit.test", client=recorded(200, "mailpit_headers.json", seen))

    headers = mailpit.headers("Jw5Zi3ms6vYBYuyRfZ3XyC")

    assert headers["X-Correlation-Id"] == ["tour-7f3c9a"]
    assert seen[0].url.path == "/api/v1/message/Jw5Zi3ms6vYBYuyRfZ3XyC/headers"


def test_mailpit_error_is_raised():
    seen: list[httpx.Request] = []
    client = recorded(500, "mailpit_search_empty.json", seen)
    mailpit = Mailpit("http://mailpit.test", client=client)
    with pytest.raises(httpx.HTTPStatusError):
        mailpit.search("to:x@example.com")
