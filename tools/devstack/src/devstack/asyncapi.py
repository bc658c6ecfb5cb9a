"""docs/asyncapi.yaml, generated from the code: the wire contract as an AsyncAPI 3.0 document.

    python -m devstack.asyncapi           # rewrite docs/asyncapi.yaml
    python -m devstack.asyncapi --check   # exit 1 if the committed file is not current

Sources: payloads from the pydantic models (contracts, one message per published version:
`OrderPaidV1`, `OrderPaidV2`), the services from their specs (messaging.spec: what each
produces, in which versions; each consumer's queue, bindings, the events those route to it
and what it reads of each, `x-reads`), the queue names from messaging.topology, header
names from messaging.headers.
A new service, binding or event type changes the document, and `make test` says when it
was not regenerated.
Validation against the AsyncAPI 3.0 schema: tools/asyncapi (make check-asyncapi).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

import contracts
from messaging import headers as h
from messaging import spec, topology

ROOT = Path(__file__).resolve().parents[4]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
SCHEMA_REF = "#/components/schemas/{model}"
AMQP_BINDING = "0.3.0"
# AMQP properties every published message carries (messaging.publisher.build_message).
PROPERTIES = {
    "message_id": "the envelope's event_id (the inbox's deduplication key)",
    "correlation_id": "the envelope's correlation_id (one per order, X-Correlation-ID on HTTP)",
    "type": "the envelope's event_type",
    "timestamp": "when the outbox row was written (seconds)",
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": "2 (persistent)",
}


def _name(text: str) -> str:
    """`points.events.retry.1s` -> `pointsEventsRetry1s` (a component key)."""
    parts = re.split(r"[^A-Za-z0-9]+", text)
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _headers_schema(dead_letter: bool) -> dict:
    props: dict = {
        "traceparent": {"type": "string", "description": "W3C trace context of the publish"},
        "tracestate": {"type": "string", "description": "W3C trace context (vendor part)"},
        h.ATTEMPT: {"type": "integer", "minimum": 1,
                    "description": "times the handler failed on this message so far"},
        h.DEFERRALS: {"type": "integer", "minimum": 1,
                      "description": "times it waited for an earlier event of its order"},
    }
    if dead_letter:
        props |= {
            h.ERROR_CLASS: {"type": "string",
                            "enum": ["poison", "permanent", "exhausted", "out-of-order"]},
            h.ERROR_SERVICE: {"type": "string", "description": "the service that gave up"},
            h.ERROR_TYPE: {"type": "string", "description": "the exception's class name"},
            h.ERROR_MESSAGE: {"type": "string", "maxLength": 1000},
            h.ERROR_ATTEMPTS: {"type": "integer", "minimum": 1},
            h.ERROR_AT: {"type": "string", "format": "date-time"},
            h.ERROR_QUEUE: {"type": "string", "description": "the work queue a replay returns to"},
        }
        props["x-death"] = {"type": "array", "description": "set by the broker when it "
                            "dead-lettered the message itself (delivery limit); then the "
                            "error-* headers are absent"}
    return {"type": "object", "properties": props}


def message_name(event_type: str, version: int) -> str:
    """`OrderPaid`, 2 -> `OrderPaidV2`: the message (and its payload schema) of one version."""
    return f"{event_type}V{version}"


def _message(event_type: str, version: int, dead_letter: bool) -> dict:
    key = contracts.routing_key_for(event_type)
    model = contracts.VERSIONS[event_type][version]
    return {
        "name": message_name(event_type, version) + ("DeadLettered" if dead_letter else ""),
        "title": f"{event_type} v{version}" + (" (dead-lettered)" if dead_letter else ""),
        "summary": (model.__doc__ or event_type).strip().splitlines()[0]
        if model.__doc__ else f"{event_type}, routing key {key}",
        "contentType": "application/json",
        "correlationId": {"$ref": "#/components/correlationIds/orderCorrelation"},
        "headers": {"$ref": "#/components/schemas/"
                    + ("DeadLetterHeaders" if dead_letter else "EnvelopeHeaders")},
        "payload": {"$ref": SCHEMA_REF.format(model=message_name(event_type, version))},
        "bindings": {"amqp": {"contentEncoding": "utf-8", "messageType": event_type,
                              "bindingVersion": AMQP_BINDING}},
        "x-routing-key": key,
        "x-amqp-properties": PROPERTIES,
    }


def _schemas(published: list[tuple[str, int]]) -> dict:
    schemas: dict = {}
    for event_type, version in published:
        model = contracts.VERSIONS[event_type][version]
        # What is sent: every field required, event_type and version included.
        schema = model.model_json_schema(ref_template=SCHEMA_REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[message_name(event_type, version)] = schema
    schemas["EnvelopeHeaders"] = _headers_schema(dead_letter=False)
    schemas["DeadLetterHeaders"] = _headers_schema(dead_letter=True)
    return schemas


def _queue_channel(name: str, description: str, messages: list[str], vhost: str) -> dict:
    return {
        "address": name,
        "description": description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
        "bindings": {"amqp": {
            "is": "queue",
            "queue": {"name": name, "durable": True, "exclusive": False, "autoDelete": False,
                      "vhost": vhost},
            "bindingVersion": AMQP_BINDING,
        }},
    }


def _ref(channel: str, messages: list[str]) -> dict:
    return {
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }


def published() -> list[tuple[str, int]]:
    """(event type, version) of every message some service can publish, in contract order."""
    can = {pair for producer in spec.installed() for pair in producer.published()}
    return [(t, v) for t, versions in contracts.VERSIONS.items() for v in versions
            if (t, v) in can]


def build() -> dict:
    messages = published()
    events = [message_name(t, v) for t, v in messages]
    vhost = "/"
    channels: dict = {
        "shopEvents": {
            "address": topology.EXCHANGE,
            "description": "The topic exchange every event is published to; routing key = "
                           "the event type in dotted lower case (OrderPaid -> order.paid).",
            "messages": {e: {"$ref": f"#/components/messages/{e}"} for e in events},
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": topology.EXCHANGE, "type": "topic", "durable": True,
                             "autoDelete": False, "vhost": vhost},
                "bindingVersion": AMQP_BINDING,
            }},
        },
    }
    publish_binding = {"amqp": {"deliveryMode": 2, "mandatory": True, "timestamp": True,
                                "bindingVersion": AMQP_BINDING}}
    operations: dict = {}
    for producer in spec.installed():
        for event in producer.produces:
            versions = [message_name(t, v) for t, v in producer.published() if t == event]
            operations[f"{producer.name}Publish{event}"] = {
                "action": "send",
                "title": f"{producer.name}'s outbox relay publishes {event}",
                "description": "Published from the transactional outbox with publisher "
                               "confirms; at least once (consumers deduplicate by message_id)."
                               + (" One version at a time, picked by a setting: "
                                  + ", ".join(versions) + "." if len(versions) > 1 else ""),
                **_ref("shopEvents", versions),
                "bindings": {"amqp": {**publish_binding["amqp"],
                                      "cc": [contracts.routing_key_for(event)]}},
                "x-service": producer.name,
            }
    for consumer in spec.consumers():
        assert consumer.consumes is not None
        service = consumer.name
        queues = topology.QueueTopology.for_service(service)
        handled = [message_name(t, v) for t, v in messages if consumer.consumes.receives(t)]
        handled_dead = [e + "DeadLettered" for e in handled]
        work = _name(queues.name)
        channels[work] = _queue_channel(
            queues.name,
            f"{service}'s work queue (quorum), bound to {topology.EXCHANGE} with "
            + ", ".join(f"`{b}`" for b in queues.bindings)
            + f"; after {topology.DELIVERY_LIMIT} deliveries it dead-letters to {queues.dlq}.",
            handled, vhost,
        )
        channels[work]["x-bindings"] = [
            {"exchange": topology.EXCHANGE, "routingKey": b} for b in queues.bindings
        ]
        retry_channels = []
        for delay in queues.retry_delays:
            name = queues.retry_queue(delay)
            retry_channels.append(_name(name))
            channels[_name(name)] = _queue_channel(
                name, f"Wait queue: after {delay} s (message TTL) the broker dead-letters "
                f"the message back to {queues.name} through the default exchange.",
                handled, vhost)
        dlq = _name(queues.dlq)
        channels[dlq] = _queue_channel(
            queues.dlq, f"{service}'s dead-letter queue: parked until `make dlq` replays "
            "or discards it; the error-* headers say why.", handled_dead, vhost)
        operations[f"{service}Receive"] = {
            "action": "receive",
            "title": f"{service} consumes its work queue",
            "description": "Manual acks after the inbox commit; duplicates and stale events "
                           "are acked and skipped.",
            **_ref(work, handled),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            "x-service": service,
            # Its consumer-driven contract (messaging.spec.Reads): checked by `make test`.
            "x-reads": {message_name(r.event_type, r.version): r.every_field
                        for r in consumer.reads},
        }
        for channel in retry_channels:
            operations[f"{service}{channel[len(work):]}"] = {
                "action": "send",
                "title": f"{service} parks a failed or early message to wait",
                "description": f"Through {service}'s own exchange ({queues.exchange}), "
                               "routing key = the queue name; confirmed before the original "
                               "is acked.",
                **_ref(channel, handled),
                "bindings": publish_binding,
                "x-service": service,
            }
        operations[f"{service}DeadLetter"] = {
            "action": "send",
            "title": f"{service} dead-letters a message it gives up on",
            "description": f"Through {service}'s own exchange ({queues.exchange}), routing "
                           "key = the queue name; confirmed before the original is acked.",
            **_ref(dlq, handled_dead),
            "bindings": publish_binding,
            "x-service": service,
        }
        operations[f"{service}ReturnUnspent"] = {
            "action": "send",
            "title": f"{service} sends a message that failed while paused back to its queue",
            "description": "The kill switch (docs/failure.md#the-kill-switch): a fresh copy "
                           "with the same body, ids and headers (retry counters unchanged), "
                           f"through {queues.exchange} (routing key = the work queue's name); "
                           "confirmed before the original is acked.",
            **_ref(work, handled),
            "bindings": publish_binding,
            "x-service": service,
        }
        operations[f"{service}DlqReplay"] = {
            "action": "send",
            "title": f"the DLQ tool replays {queues.dlq} to {queues.name}",
            "description": "`make dlq ARGS=\"replay <service> ...\"`: the same body and ids, "
                           f"error-* headers and retry counters dropped, through {queues.exchange} "
                           "(routing key = the work queue's name).",
            **_ref(work, handled),
            "bindings": publish_binding,
            "x-service": "dlq-tool",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Mini EC events",
            "version": "1.0.0",
            "description": "The messages between Mini EC's services over RabbitMQ (AMQP 0-9-1). "
                           "Generated by `python -m devstack.asyncapi` from the code; do not "
                           "edit by hand. Every message is one JSON envelope, one message per "
                           "version of an event type (OrderPaidV1, OrderPaidV2), with its AMQP "
                           "properties set from the envelope (x-amqp-properties). Readers are "
                           "tolerant: a field they do not know is kept, never an error "
                           "(docs/evolution.md).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0-9-1",
                      "description": "make run: the local broker, vhost /"},
            "compose": {"host": "rabbitmq:5672", "pathname": "/shop", "protocol": "amqp",
                        "protocolVersion": "0-9-1",
                        "description": "docker compose: vhost shop, one user per service"},
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": _schemas(messages),
            "messages": {
                **{message_name(t, v): _message(t, v, dead_letter=False) for t, v in messages},
                **{message_name(t, v) + "DeadLettered": _message(t, v, dead_letter=True)
                   for t, v in messages},
            },
            "correlationIds": {
                "orderCorrelation": {
                    "description": "One id per order across HTTP, messages, logs, spans and "
                                   "mails; also the AMQP correlation_id property.",
                    "location": "$message.payload#/correlation_id",
                },
            },
        },
    }


def render() -> str:
    header = "# Generated by `python -m devstack.asyncapi` from the code. Do not edit.\n"
    return header + yaml.safe_dump(build(), sort_keys=False, width=100, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
        if current != text:
            print(f"{DOCUMENT.relative_to(ROOT)} is not current: run "
                  "`.venv/bin/python -m devstack.asyncapi`", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.parent.mkdir(exist_ok=True)
    DOCUMENT.write_text(text, encoding="utf-8")
    print(f"wrote {DOCUMENT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
