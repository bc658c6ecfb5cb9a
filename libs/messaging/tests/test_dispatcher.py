"""The in-process dispatcher: each registered handler, in turn, in its own span; failures
reported, never swallowed and never stopping the other handlers."""

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from contracts import OrderPaid, OrderRefunded
from devstack import events
from messaging.dispatcher import Dispatcher
from messaging.inbox import Outcome
from messaging.observability import correlation

pytestmark = pytest.mark.unit


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporter.tracer = provider.get_tracer("test")
    return exporter


def recorder(calls, name, result=None):
    async def handler(event):
        calls.append((name, event.event_type))
        return result
    return handler


async def test_dispatch_awaits_each_handler_of_the_event_type_in_registration_order():
    calls = []
    dispatcher = Dispatcher()
    dispatcher.register(OrderPaid, "points", recorder(calls, "points"))
    dispatcher.register("OrderPaid", "mailer", recorder(calls, "mailer"))
    dispatcher.register(OrderRefunded, "refunds-only", recorder(calls, "refunds-only"))

    failures = await dispatcher.dispatch(events.order_paid())

    assert failures == []
    assert calls == [("points", "OrderPaid"), ("mailer", "OrderPaid")]


async def test_an_event_type_without_handlers_is_dispatched_to_nobody():
    dispatcher = Dispatcher()
    dispatcher.register(OrderRefunded, "points", recorder([], "points"))

    assert await dispatcher.dispatch(events.order_paid()) == []


async def test_subscribe_registers_a_handler_for_every_event_type_by_default():
    calls = []
    dispatcher = Dispatcher()
    dispatcher.subscribe("audit", recorder(calls, "audit"))
    paid = events.order_paid()

    await dispatcher.dispatch_all([paid, events.order_refunded(paid)])

    assert calls == [("audit", "OrderPaid"), ("audit", "OrderRefunded")]
    assert dispatcher.handlers_for("OrderRefunded") == ["audit"]


async def test_a_failing_handler_is_reported_and_the_next_handlers_still_run(caplog):
    calls = []

    async def broken(event):
        raise ConnectionRefusedError("smtp down")

    dispatcher = Dispatcher()
    dispatcher.register(OrderPaid, "mailer", broken)
    dispatcher.register(OrderPaid, "audit", recorder(calls, "audit"))
    paid = events.order_paid()

    with caplog.at_level(logging.INFO, logger="messaging.dispatcher"):
        failures = await dispatcher.dispatch(paid)

    assert [(f.handler, f.event_id) for f in failures] == [("mailer", str(paid.event_id))]
    assert isinstance(failures[0].error, ConnectionRefusedError)
    assert calls == [("audit", "OrderPaid")]
    failed_line = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "mailer failed on OrderPaid" in failed_line.getMessage()
    assert failed_line.exc_info is not None


async def test_each_handler_call_gets_a_span_with_the_correlation_id(spans):
    async def broken(event):
        raise RuntimeError("boom")

    dispatcher = Dispatcher(tracer=spans.tracer)
    dispatcher.register(OrderPaid, "points", recorder([], "points", Outcome.APPLIED))
    dispatcher.register(OrderPaid, "mailer", broken)
    paid = events.order_paid(correlation_id="corr-123")

    await dispatcher.dispatch(paid)

    finished = {s.attributes["mini_ec.handler"]: s for s in spans.get_finished_spans()}
    assert set(finished) == {"points", "mailer"}
    for span in finished.values():
        assert span.attributes["mini_ec.correlation_id"] == "corr-123"
        assert span.attributes["mini_ec.event_id"] == str(paid.event_id)
    assert finished["points"].status.status_code is StatusCode.UNSET
    assert finished["mailer"].status.status_code is StatusCode.ERROR
    assert finished["mailer"].events[0].name == "exception"


async def test_handlers_see_the_events_correlation_id_when_none_is_current():
    seen = []

    async def handler(event):
        seen.append(correlation.get())

    dispatcher = Dispatcher()
    dispatcher.register(OrderPaid, "points", handler)
    await dispatcher.dispatch(events.order_paid(correlation_id="from-the-event"))

    assert seen == ["from-the-event"]
    assert correlation.get() is None


def test_registering_an_unknown_event_type_is_refused():
    with pytest.raises(ValueError, match="unknown event type 'OrderCancelled'"):
        Dispatcher().register("OrderCancelled", "points", recorder([], "points"))


def test_registering_the_same_handler_name_twice_for_one_event_type_is_refused():
    dispatcher = Dispatcher()
    dispatcher.register(OrderPaid, "points", recorder([], "points"))
    with pytest.raises(ValueError, match="already registered"):
        dispatcher.register(OrderPaid, "points", recorder([], "points"))
