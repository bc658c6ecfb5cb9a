"""The consumer-driven contract check: does what the producers publish, as the generated
AsyncAPI document says (devstack.asyncapi), break what a consumer reads (its spec's
`reads`, messaging.spec.Reads)? docs/evolution.md, "Consumer-driven contracts".

    python -m devstack.contract_check    # exit 1 and one line per problem, if any

A problem is:
- a published version of an event type that a consumer it is routed to does not read (it
  would dead-letter every such message, even one of a type it then ignores: it is parsed
  first; deploy the reader first);
- a field a consumer reads that the published schema of that version lacks, makes optional
  or gives another JSON type (removing or retyping a field someone reads);
- a version a consumer says it reads that the contracts cannot read (no model for it, or no
  upcaster from it to the current version);
- an event type routed to a consumer (its bindings) with no `Reads` at all.

A version a consumer reads that nobody publishes (any more) is no problem: readers stay
until the last such event has left the queues (docs/evolution.md, "Retiring a version").
`make test` runs it (tests/specs/test_consumer_contracts.py), before anything reaches a broker.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, get_type_hints

import contracts
from contracts.upcasting import UPCASTERS
from messaging import spec

SCHEMAS = "#/components/schemas/"


def published(document: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(event type, version) -> payload schema of every message a service sends to the
    exchange, read from the document (the operations of the producers' relays)."""
    found = {}
    components = document["components"]
    for operation in document["operations"].values():
        if operation["action"] != "send" or operation["channel"]["$ref"] != "#/channels/shopEvents":
            continue
        for ref in operation["messages"]:
            name = ref["$ref"].rsplit("/", 1)[1]
            payload = _resolve(document, components["messages"][name]["payload"])
            props = payload["properties"]
            found[(props["event_type"]["const"], props["version"]["const"])] = payload
    return found


def problems(document: dict[str, Any],
             consumers: Iterable[spec.ServiceSpec] | None = None) -> list[str]:
    """Every way the published schemas break a declared reader; [] when none does."""
    out = published(document)
    found: list[str] = []
    for consumer in consumers if consumers is not None else spec.consumers():
        assert consumer.consumes is not None
        name = consumer.name
        reads = {(r.event_type, r.version): r for r in consumer.reads}
        routed = {t for t in contracts.EVENT_TYPES if consumer.consumes.receives(t)}
        for event_type in sorted(routed - {t for t, _ in reads}):
            found.append(f"{name} receives {event_type} but declares no Reads of it")
        for event_type, version in sorted(out):
            if event_type in routed and (event_type, version) not in reads:
                found.append(f"{event_type} version {version} is published, and {name} "
                             f"(which receives it) does not read it")
        for (event_type, version), read in sorted(reads.items()):
            unreadable = _unreadable(event_type, version)
            if unreadable:
                found.append(f"{name} reads {event_type} version {version}, but {unreadable}")
            schema = out.get((event_type, version))
            if schema is None:
                continue  # not published (any more): nothing to hold it to
            for path, expected in read.every_field.items():
                broken = _field_problem(document, schema, path, expected)
                if broken:
                    found.append(f"{name} reads {path} ({expected}) of {event_type} "
                                 f"version {version}, but the published schema {broken}")
    return found


def _unreadable(event_type: str, version: int) -> str | None:
    """Why the contracts cannot hand this version to handlers as the current one, or None:
    each step's upcaster names (by its return type) the version it leads to."""
    model = contracts.VERSIONS.get(event_type, {}).get(version)
    if model is None:
        return "the contracts have no model of that version"
    current = contracts.EVENT_TYPES[event_type]
    for _ in contracts.VERSIONS[event_type]:  # at most one step per version
        if model is current:
            return None
        step = UPCASTERS.get(model)
        if step is None:
            break
        model = get_type_hints(step)["return"]
    return f"nothing upcasts {model.__name__} to {current.__name__}"


def _field_problem(document: dict[str, Any], schema: dict[str, Any], path: str,
                   expected: str) -> str | None:
    node = schema
    for part in path.split("."):
        node = _resolve(document, node)
        if part not in node.get("properties", {}):
            return f"has no {path}"
        if part not in node.get("required", []):
            return f"makes {path} optional"
        node = node["properties"][part]
    actual = _json_type(_resolve(document, node))
    if actual != expected:
        return f"types {path} as {actual}"
    return None


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith(SCHEMAS):
            raise ValueError(f"unexpected reference {ref}")
        node = document["components"]["schemas"][ref.removeprefix(SCHEMAS)]
    return node


def _json_type(node: dict[str, Any]) -> str:
    """The JSON type a schema node says: `type`, or the type of its const or enum values."""
    if "type" in node:
        return str(node["type"])
    values = [node["const"]] if "const" in node else node.get("enum", [])
    kinds = {type(v) for v in values}
    names = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if len(kinds) == 1 and next(iter(kinds)) in names:
        return names[next(iter(kinds))]
    if "properties" in node:
        return "object"
    return "unknown"


def main() -> int:
    from devstack import asyncapi

    found = problems(asyncapi.build())
    for problem in found:
        print(f"contract check: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
