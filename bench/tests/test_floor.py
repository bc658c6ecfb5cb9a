"""The floor scenario: a bare consumer's work is points' (applied once), and its variants."""

import asyncio
import json

import pytest

from bench import floor
from bench.run import main, parse_args


@pytest.mark.unit
def test_variants_are_the_bare_consumer_each_layer_alone_then_all():
    assert [floor.label(v) for v in floor.variants()] == [
        "bare", "engine", "span", "log", "metric", "engine+span+log+metric"]


@pytest.mark.unit
def test_the_bare_consumer_applies_an_event_once_and_skips_its_duplicate(tmp_path):
    conn = floor.open_database(tmp_path / "floor.db")
    assert floor.apply(conn, "event-1") is True
    assert floor.apply(conn, "event-1") is False
    assert floor.apply(conn, "event-2") is True
    assert conn.execute("SELECT count(*) FROM points").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 2


@pytest.mark.unit
def test_floor_rate_defaults_to_ten_a_second():
    assert parse_args([]).floor_rate == 10.0


@pytest.mark.unit
@pytest.mark.parametrize("rate", ["0", "-1", "fast", "inf", "nan"])
def test_floor_rate_must_be_a_positive_number(rate, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--floor-rate", rate])
    assert "a number > 0" in capsys.readouterr().err


@pytest.mark.unit
def test_the_table_shows_what_each_layer_adds_to_the_bare_consumer():
    result = {"offered_rate": 10.0,
              "variants": {"bare": {"cpu_ms_per_message": 0.9},
                           "engine": {"cpu_ms_per_message": 1.9}},
              "added_ms": {"engine": 1.0}}
    lines = floor.format_floor(result).splitlines()
    assert lines[1].split() == ["bare", "0.90"]
    assert lines[2].split() == ["engine", "1.90", "+1.00"]


class _Delivery:
    """What the floor's handler reads of an aio-pika delivery, and its ack."""

    def __init__(self, event_id: str):
        self.body = json.dumps({"id": event_id}).encode()
        self.acked = 0

    async def ack(self) -> None:
        self.acked += 1


# "span" and "log" set process-wide state (the tracer provider, the root logger's handlers);
# the scenario runs every variant in a process of its own, the tests check the others here.
@pytest.mark.unit
@pytest.mark.parametrize("layers", [(), ("engine",), ("metric",), ("engine", "metric")])
def test_each_variant_applies_a_message_once_and_acks_every_delivery(tmp_path, layers):
    db = tmp_path / "floor.db"

    async def deliver_twice() -> list[_Delivery]:
        handle = await floor.layered_handler(db, layers, "floor-test")
        deliveries = [_Delivery("event-1"), _Delivery("event-1")]
        for delivery in deliveries:
            await handle(delivery)
        return deliveries

    deliveries = asyncio.run(deliver_twice())
    assert [d.acked for d in deliveries] == [1, 1]
    assert floor.applied(db) == 1


@pytest.mark.unit
def test_the_floor_refuses_a_baseline_tree(tmp_path, capsys):
    assert main(["--only", "floor", "--baseline-tree", str(tmp_path)]) == 2
    assert "floor measures this tree's library" in capsys.readouterr().err
