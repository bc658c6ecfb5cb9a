"""A small client of Jaeger v2's query API (`/api/v3/traces`): one trace by correlation id.

Shapes: the OpenTelemetry-aligned API v3 of jaegertracing/jaeger (cmd/query/app/apiv3,
swagger in jaeger-idl `swagger/api_v3/query_service.openapi.yaml`). A 200 is OTLP JSON
wrapped as `{"result": {"resourceSpans": [{"resource": {...}, "scopeSpans": [{"spans": [...]}]}]}}`;
no match is a 404 with `{"error": {"httpCode": 404, "message": "No traces found"}}`.

Query parameters: the snake_case names (`query.service_name`, `query.start_time_min`, ...) are
what Jaeger 2.x first shipped and what later versions still accept as aliases. Attribute
filtering (`query.attributes`, a JSON map) exists only in later versions; older ones ignore it,
so the spans are filtered here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from messaging.observability.telemetry import ATTRIBUTE as CORRELATION_ATTRIBUTE


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    attributes: dict[str, object] = field(default_factory=dict)


def _value(any_value: dict) -> object:
    """An OTLP AnyValue as a Python value (int64s are strings in proto3 JSON)."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in any_value:
            return any_value[key]
    if "intValue" in any_value:
        return int(any_value["intValue"])
    if "arrayValue" in any_value:
        return [_value(v) for v in any_value["arrayValue"].get("values", [])]
    return None


def _attributes(items: list[dict] | None) -> dict[str, object]:
    return {item["key"]: _value(item.get("value", {})) for item in items or []}


def spans_of(payload: dict) -> list[Span]:
    """Every span of an `/api/v3/traces` response, with its service name from the resource."""
    spans = []
    for resource_spans in payload.get("result", {}).get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                spans.append(Span(
                    trace_id=span["traceId"],
                    span_id=span["spanId"],
                    parent_span_id=span.get("parentSpanId", ""),
                    name=span["name"],
                    service=service,
                    attributes=_attributes(span.get("attributes")),
                ))
    return spans


class TraceQueryError(Exception):
    """Jaeger answered with something other than traces or "none yet"."""


class Jaeger:
    def __init__(self, base_url: str, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=10)

    def close(self) -> None:
        self._client.close()

    def find_spans(self, service: str, *, attributes: dict[str, str] | None = None,
                   lookback: timedelta = timedelta(hours=1)) -> list[Span]:
        """Spans of the traces that touch `service` and carry `attributes` (all of them);
        [] when Jaeger has none yet (its 404)."""
        now = datetime.now(UTC)
        params = {
            "query.service_name": service,
            "query.start_time_min": (now - lookback).isoformat().replace("+00:00", "Z"),
            "query.start_time_max": (now + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "query.num_traces": "100",
        }
        if attributes:
            params["query.attributes"] = json.dumps(attributes)
        response = self._client.get("/api/v3/traces", params=params)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise TraceQueryError(
                f"GET /api/v3/traces: {response.status_code} {response.text[:300]}"
            )
        spans = spans_of(response.json())
        wanted = attributes or {}
        matching = {s.trace_id for s in spans
                    if all(s.attributes.get(k) == v for k, v in wanted.items())}
        return [s for s in spans if s.trace_id in matching]

    def trace_by_correlation_id(self, correlation_id: str, service: str = "payment") -> list[Span]:
        """The spans of the traces whose spans carry `mini_ec.correlation_id` ([] when none
        yet)."""
        return self.find_spans(service, attributes={CORRELATION_ATTRIBUTE: correlation_id})
