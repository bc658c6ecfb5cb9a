"""One payment, one trace, across five processes; the same ids in every service's logs; the
latency histograms' exemplars name the traces the services exported.

The trace continues through the second producer: shipping's CONSUMER span of the OrderPaid
-> its outbox row -> its relay -> its publish of OrderShipped -> the CONSUMER spans of the
services bound to order.shipped.

The test runs its own OTLP/HTTP receiver (decoding with opentelemetry-proto) and points the
services at it, exactly as they would be pointed at Jaeger's port 4318.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from conftest import start_stack
from devstack.smtp_sink import mails_in
from devstack.wait import eventually

pytestmark = pytest.mark.e2e

# messaging.observability.telemetry.ATTRIBUTE: what Jaeger's tag search uses
CID = "mini_ec.correlation_id"

KINDS = {ProtoSpan.SPAN_KIND_INTERNAL: "INTERNAL", ProtoSpan.SPAN_KIND_SERVER: "SERVER",
         ProtoSpan.SPAN_KIND_CLIENT: "CLIENT", ProtoSpan.SPAN_KIND_PRODUCER: "PRODUCER",
         ProtoSpan.SPAN_KIND_CONSUMER: "CONSUMER"}


@dataclass
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: int
    attributes: dict = field(default_factory=dict)


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """A minimal OTLP/HTTP traces endpoint (POST /v1/traces, protobuf) keeping what it gets."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.keep(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def keep(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        service=str(resource.get("service.name")), name=s.name,
                        kind=KINDS.get(s.kind, str(s.kind)), trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex() or None,
                        start=s.start_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                    )
                    with self._lock:
                        self.spans.append(span)

    def received(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _deferred(span: Span) -> bool:
    """A consumer's attempt that waited (out of order) instead of applying."""
    return "error.type" in span.attributes


def sql_label(statement: str) -> str:
    """SQL spans are named "<verb> <database file>"; say which table instead."""
    words = statement.split()
    if words[0].upper() == "SELECT" and "FROM" in words:
        return f"SELECT … FROM {words[words.index('FROM') + 1]}"
    return " ".join(words[:3])


def tree(spans: list[Span]) -> str:
    """The trace as indented text: `service  name  [KIND]`, children in start order."""
    by_parent: dict[str | None, list[Span]] = {}
    ids = {s.span_id for s in spans}
    for s in spans:
        by_parent.setdefault(s.parent_id if s.parent_id in ids else None, []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s.start):
            label = s.name
            if statement := s.attributes.get("db.statement"):
                label = sql_label(str(statement))
            lines.append(f"{'    ' * depth}{s.service:<8} {label}  [{s.kind}]")
            walk(s.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


@pytest.fixture
def receiver():
    with OtlpReceiver() as running:
        yield running


def log_lines(path) -> list[dict]:
    """Every line of a service's output, each parsed as the one JSON object it must be."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_payment_is_one_trace_across_payment_points_mailer_audit_and_shipping(
    tmp_path, amqp_url, smtp, receiver
):
    stack = start_stack(
        tmp_path, amqp_url, smtp.port,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_SQL_SPANS="on",  # off by default natively; this test shows the whole tree
    )
    try:
        cid = f"e2e-trace-{uuid.uuid4().hex[:12]}"
        order_id = str(uuid.uuid4())
        response = httpx.post(
            f"{stack.url('payment')}/payments", headers={"X-Correlation-ID": cid}, timeout=10,
            json={"order_id": order_id, "customer_id": "alice", "email": "alice@example.com",
                  "amount": 1200, "currency": "JPY"},
        )
        assert response.status_code == 201, response.text

        def consumers_and_mails_exported():
            mine = [s for s in receiver.received() if s.attributes.get(CID) == cid]
            consumers = [s for s in mine if s.kind == "CONSUMER" and not _deferred(s)]
            smtp_sent = [s for s in mine if s.name == "smtp send"]
            # OrderPaid: points, mailer, audit, shipping; OrderShipped: points, mailer, audit.
            return mine if len(consumers) == 7 and len(smtp_sent) == 2 else None

        eventually(consumers_and_mails_exported, timeout=60,
                   message="all consumer spans exported")
        audit_rows = eventually(
            lambda: rows if len(rows := httpx.get(
                f"{stack.url('audit')}/events", params={"order_id": order_id},
                timeout=5).json()) == 2 else None,
            timeout=30, message="both audit rows",
        )
    finally:
        stack.stop()  # SIGTERM: each service flushes its last spans on the way out

    everything = receiver.received()
    mine = [s for s in everything if s.attributes.get(CID) == cid]
    [trace_id] = {s.trace_id for s in mine}
    trace = [s for s in everything if s.trace_id == trace_id]
    print(f"\ntrace {trace_id} (correlation id {cid}):\n{tree(trace)}")

    # Exactly one trace, and every span in it carries the correlation id.
    assert trace == mine
    [server] = [s for s in trace if s.kind == "SERVER"]
    assert (server.service, server.name, server.parent_id) == ("payment", "POST /payments", None)
    # The events' publishes; a shipped mail that came before its thank-you mail is deferred
    # once or more (a `process` span with error.type out-of-order, and its republish to the
    # wait queue): those hops are followed, not counted.
    events_out = [s for s in trace if s.kind == "PRODUCER" and s.name == "publish shop.events"]
    producers = {s.service: s for s in events_out}
    relays = {s.service: s for s in trace if s.name == "outbox relay"}
    assert sorted(producers) == sorted(relays) == ["payment", "shipping"] == sorted(
        s.service for s in events_out)
    by_id = {s.span_id: s for s in trace}
    applied = [s for s in trace if s.kind == "CONSUMER" and not _deferred(s)]
    assert len(applied) == 7
    assert all(s.attributes.get("error.type") == "out-of-order" and s.service in
               ("mailer", "audit") for s in trace if s.kind == "CONSUMER" and _deferred(s))

    def publish_of(span: Span) -> Span:
        """The event publish a consumer span took its message from, through deferrals."""
        parent = by_id[span.parent_id]  # type: ignore[index]
        while parent not in events_out:
            parent = by_id[parent.parent_id]  # type: ignore[index]
        return parent

    def consumers_of(producer: Span) -> dict[str, Span]:
        return {s.service: s for s in applied if publish_of(s) is producer}

    # payment: HTTP -> its relay -> its publish -> every consumer bound to order.paid.
    of_paid = consumers_of(producers["payment"])
    assert sorted(of_paid) == ["audit", "mailer", "points", "shipping"]
    assert relays["payment"].parent_id == server.span_id
    assert producers["payment"].parent_id == relays["payment"].span_id
    # shipping: its CONSUMER span of the OrderPaid -> its relay (the outbox row carries that
    # span's context) -> its publish -> every consumer bound to order.shipped.
    of_shipped = consumers_of(producers["shipping"])
    assert sorted(of_shipped) == ["audit", "mailer", "points"]
    assert relays["shipping"].parent_id == of_paid["shipping"].span_id
    assert producers["shipping"].parent_id == relays["shipping"].span_id

    # Every messaging hop by the OpenTelemetry conventions for RabbitMQ, on both hops.
    for producer_name, routing_key, consumers in (("payment", "order.paid", of_paid),
                                                  ("shipping", "order.shipped", of_shipped)):
        relay, producer = relays[producer_name], producers[producer_name]
        event_id = relay.attributes["mini_ec.event_id"]
        assert relay.attributes["mini_ec.order_id"] == order_id
        hop = {"messaging.system": "rabbitmq", "messaging.message.id": event_id,
               "messaging.message.conversation_id": cid, "mini_ec.correlation_id": cid,
               "messaging.rabbitmq.destination.routing_key": routing_key}
        assert producer.name == "publish shop.events"
        assert (hop | {"messaging.destination.name": "shop.events",
                       "messaging.operation.type": "send",
                       "messaging.operation.name": "publish"}).items() <= (
            producer.attributes.items()), producer_name
        for service, consumer in consumers.items():
            assert consumer.name == f"process {service}.events"
            # A message that waited in a retry queue comes back by that queue's route.
            direct = consumer.parent_id == producer.span_id
            expected = hop if direct else {
                k: v for k, v in hop.items() if k != "messaging.rabbitmq.destination.routing_key"}
            assert "messaging.rabbitmq.destination.routing_key" in consumer.attributes
            assert (expected | {"messaging.destination.name": f"{service}.events",
                           "messaging.operation.type": "process",
                           "messaging.operation.name": "process",
                           "mini_ec.event_id": event_id, "mini_ec.order_id": order_id}
                    ).items() <= consumer.attributes.items(), (producer_name, service)
            assert "error.type" not in consumer.attributes
    deprecated = {"messaging.destination", "messaging.operation", "messaging.conversation_id",
                  "messaging.temp_destination", "net.peer.name", "correlation_id", "order_id"}
    messaging = [*relays.values(), *producers.values(), *of_paid.values(), *of_shipped.values()]
    assert [(s.name, k) for s in messaging for k in s.attributes if k in deprecated] == []
    smtp_spans = sorted((s for s in trace if s.name == "smtp send"), key=lambda s: s.start)
    assert [(s.service, s.kind) for s in smtp_spans] == [("mailer", "CLIENT")] * 2
    assert [s.parent_id for s in smtp_spans] == [of_paid["mailer"].span_id,
                                                 of_shipped["mailer"].span_id]
    assert all(s.attributes["mini_ec.mail.message_id"].startswith("<") for s in smtp_spans)
    # OTEL_SQL_SPANS=on: each service's statements are spans inside the order's trace, the
    # payment's under its request, each consumer's under one of its CONSUMER spans.
    statements = [s for s in trace if s.attributes.get("db.statement")]
    consumer_ids = {s.span_id for s in trace if s.kind == "CONSUMER"}
    assert {s.service for s in statements} == {
        "payment", "points", "mailer", "audit", "shipping"}
    assert any(s.parent_id == server.span_id for s in statements if s.service == "payment")
    for service in ("points", "mailer", "audit", "shipping"):
        assert any(s.parent_id in consumer_ids for s in statements if s.service == service)
    # Not only this trace: no span of any service lacks a correlation id (probes make none).
    assert [s.name for s in everything if not s.attributes.get(CID)] == []

    # audit stored the order's trace id and correlation id, for both events.
    assert sorted(row["event_type"] for row in audit_rows) == ["OrderPaid", "OrderShipped"]
    assert {(row["trace_id"], row["correlation_id"]) for row in audit_rows} == {(trace_id, cid)}

    # Both mails carry the correlation id.
    mails = mails_in(tmp_path / "mail")
    assert len(mails) == 2 and {mail["X-Correlation-ID"] for mail in mails} == {cid}

    # Every line each service wrote is one JSON object; each service logged this payment
    # with the same correlation id and trace id.
    for service in ("payment", "points", "mailer", "audit", "shipping"):
        lines = log_lines(tmp_path / f"{service}.log")
        assert all({"time", "level", "service", "message", "trace_id", "span_id",
                    "correlation_id"} <= line.keys() for line in lines)
        about_it = [line for line in lines if line["correlation_id"] == cid]
        assert about_it, f"{service} logged nothing with {cid}"
        assert {line["trace_id"] for line in about_it} == {trace_id}, service
        assert {line["service"] for line in about_it} == {service}


# The latency histograms and the services that observe them in one payment's course.
EXEMPLARS_EXPECTED = {
    "payment": {"http_request_duration_seconds", "outbox_publish_lag_seconds"},
    "points": {"handler_duration_seconds", "event_lag_seconds"},
    "mailer": {"handler_duration_seconds", "event_lag_seconds"},
    "audit": {"handler_duration_seconds", "event_lag_seconds", "http_request_duration_seconds"},
    "shipping": {"handler_duration_seconds", "event_lag_seconds",
                 "outbox_publish_lag_seconds"},
}


def exemplars(url: str) -> dict[str, set[str]]:
    """{histogram: the trace ids of its exemplars} of one service's OpenMetrics exposition."""
    response = httpx.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text"},
                         timeout=10)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    found: dict[str, set[str]] = {}
    for family in openmetrics_families(response.text):
        for sample in family.samples:
            if sample.exemplar is not None:
                found.setdefault(family.name, set()).add(sample.exemplar.labels["trace_id"])
    return found


def test_the_latency_histograms_carry_exemplars_naming_traces_the_services_exported(
    tmp_path, amqp_url, smtp, receiver
):
    stack = start_stack(tmp_path, amqp_url, smtp.port,
                        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                        OTEL_BSP_SCHEDULE_DELAY="200")
    try:
        orders = [str(uuid.uuid4()) for _ in range(3)]
        for order_id in orders:
            response = httpx.post(f"{stack.url('payment')}/payments", timeout=10, json={
                "order_id": order_id, "customer_id": "alice", "email": "alice@example.com",
                "amount": 1200, "currency": "JPY"})
            assert response.status_code == 201, response.text
        order_traces: set[str] = set()
        for order_id in orders:
            rows = eventually(
                lambda order_id=order_id: rows if len(rows := httpx.get(
                    f"{stack.url('audit')}/events", params={"order_id": order_id},
                    timeout=5).json()) == 2 else None,
                timeout=30, message="both events of the order reached audit")
            order_traces |= {row["trace_id"] for row in rows}
        # Every consumer observed both events of the last order (the mailer and points
        # last): then each histogram holds what it will hold.
        eventually(lambda: all(
            httpx.get(url, params={"order_id": orders[-1]}, timeout=5).json()[-1:]
            for url in (f"{stack.url('mailer')}/mails", f"{stack.url('shipping')}/shipments")),
            timeout=30, message="the last order's mails and shipment")
        eventually(lambda: all(exemplars(stack.url(s)).keys() >= expected
                               for s, expected in EXEMPLARS_EXPECTED.items()),
                   timeout=30, message="every latency histogram has an exemplar")
        found = {service: exemplars(stack.url(service)) for service in EXEMPLARS_EXPECTED}
    finally:
        stack.stop()  # SIGTERM: each service flushes its last spans on the way out

    print(f"\nexemplar trace ids per service and histogram: {found}")
    exported = {s.trace_id for s in receiver.received()}
    for service, histograms in found.items():
        assert histograms.keys() >= EXEMPLARS_EXPECTED[service], service
        for histogram, trace_ids in histograms.items():
            # Each exemplar names a trace the services exported...
            assert trace_ids <= exported, (service, histogram)
            # ...and the messaging paths' name the payments' own traces (audit stored them).
            if histogram != "http_request_duration_seconds":
                assert trace_ids <= order_traces, (service, histogram)
