"""docs/asyncapi.yaml is what the code generates, and it covers every event, queue and header."""

from __future__ import annotations

import pytest
import yaml

import contracts
from devstack import asyncapi
from messaging import headers as h
from messaging import spec, topology

pytestmark = pytest.mark.unit


def test_the_committed_document_is_current():
    assert asyncapi.main(["--check"]) == 0, "run `make asyncapi` and commit docs/asyncapi.yaml"


def test_a_stale_document_is_reported(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "asyncapi.yaml"
    stale.write_text(asyncapi.render().replace("OrderPaid", "OrderPayed"), encoding="utf-8")
    monkeypatch.setattr(asyncapi, "DOCUMENT", stale)
    monkeypatch.setattr(asyncapi, "ROOT", tmp_path)
    assert asyncapi.main(["--check"]) == 1
    assert "not current" in capsys.readouterr().err


def test_every_published_version_is_a_message_of_its_own():
    doc = yaml.safe_load(asyncapi.render())
    publish = doc["operations"]["paymentPublishOrderPaid"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in publish["messages"]] == [
        "OrderPaidV1", "OrderPaidV2"]
    schemas = doc["components"]["schemas"]
    assert schemas["OrderPaidV1"]["properties"]["version"]["const"] == 1
    assert schemas["OrderPaidV2"]["properties"]["version"]["const"] == 2


def test_every_event_queue_and_header_is_in_the_document():
    doc = yaml.safe_load(asyncapi.render())
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert topology.EXCHANGE in addresses
    for consumer in spec.consumers():
        queues = topology.QueueTopology.for_service(consumer.name)
        assert {name for _, name in queues.queues()} <= addresses, consumer.name
        receive = doc["operations"][f"{consumer.name}Receive"]
        assert receive["action"] == "receive"
        routed = {ref["$ref"].rsplit("/", 1)[1] for ref in receive["messages"]}
        assert routed == {asyncapi.message_name(t, v) for t, v in asyncapi.published()
                          if consumer.consumes.receives(t)}
        assert set(receive["x-reads"]) == {asyncapi.message_name(r.event_type, r.version)
                                           for r in consumer.reads}
    for producer in spec.installed():
        for event_type in producer.produces:
            assert doc["operations"][f"{producer.name}Publish{event_type}"]["action"] == "send"
    schemas = doc["components"]["schemas"]
    for event_type, model in contracts.EVENT_TYPES.items():  # each current version
        schema = schemas[asyncapi.message_name(event_type, contracts.version_of(model))]
        assert schema["properties"]["event_type"]["const"] == event_type
        assert {"event_type", "version"} <= set(schema["required"])  # as sent
    assert set(h.ERROR_HEADERS) <= set(schemas["DeadLetterHeaders"]["properties"])
    assert {h.ATTEMPT, h.DEFERRALS, "traceparent"} <= set(schemas["EnvelopeHeaders"]["properties"])
    # No reference is left pointing at a pydantic-local $defs section.
    assert "#/$defs/" not in asyncapi.render()
