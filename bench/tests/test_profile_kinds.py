"""--profile: each sample sorted into a kind of work (event loop, socket writes, spans, ...)."""

import pytest

from bench.profiling import OTHER, format_summary, kind_of, kind_shares

TOP = ("<module> (mailer/__main__.py:5)", "serve (messaging/chassis/server.py:200)",
       "Runner.run (asyncio/runners.py:118)")


def _stack(*frames: str) -> tuple[str, ...]:
    return (*TOP, *frames)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("frames", "kind"),
    [
        ((), "event loop (wake-ups, polling, reads)"),  # uvloop's own C code
        (("Connection.__writer (aiormq/connection.py:770)",
          "StreamWriter.write (asyncio/streams.py:325)"), "socket writes"),
        (("Inbox.run (messaging/inbox.py:40)", "create_task (asyncio/tasks.py:374)"),
         "task creation"),
        (("Inbox.run (messaging/inbox.py:40)", "timeout (asyncio/timeouts.py:150)"),
         "asyncio helpers (timeouts, shields, locks, queues)"),
        (("consumed (messaging/observability/telemetry.py:80)",
          "Tracer.start_span (trace/__init__.py:1100)"), "spans (OpenTelemetry)"),
        (("Inbox.run (messaging/inbox.py:40)",
          "MetricWrapperBase.labels (prometheus_client/metrics.py:190)"), "metrics"),
        (("Inbox.run (messaging/inbox.py:40)", "Logger.info (logging/__init__.py:1477)"),
         "logs"),
        (("Session.commit (sqlalchemy/orm/session.py:1900)",
          "InlineSqlite._execute (messaging/chassis/db.py:90)"),
         "SQL driver (SQLite, PostgreSQL execution)"),
        (("Inbox.run (messaging/inbox.py:40)",
          "Session.__init__ (sqlalchemy/orm/session.py:1500)"),
         "SQL sessions, transactions (SQLAlchemy)"),
        (("Inbox.run (messaging/inbox.py:40)",), "messaging core (inbox, outbox, consumer, relay)"),
        (("send_mail (mailer/handlers.py:30)",), "service code"),
    ],
)
def test_the_innermost_frame_that_says_gives_the_kind(frames, kind):
    assert kind_of(_stack(*frames)) == kind


@pytest.mark.unit
def test_generic_helpers_count_as_what_they_wrap():
    stack = _stack("consumed (messaging/observability/telemetry.py:80)",
                   "_GeneratorContextManager.__exit__ (contextlib.py:144)")
    assert kind_of(stack) == "spans (OpenTelemetry)"
    assert kind_of(("helper (contextlib.py:1)",)) == OTHER


@pytest.mark.unit
def test_kind_shares_add_up_to_every_sample_largest_first():
    stacks = {_stack(): 6, _stack("send_mail (mailer/handlers.py:30)"): 3, ("odd",): 1}
    assert kind_shares(stacks) == [("event loop (wake-ups, polling, reads)", 6, 0.6),
                                   ("service code", 3, 0.3), (OTHER, 1, 0.1)]
    assert kind_shares({}) == []


@pytest.mark.unit
def test_summary_ends_with_the_shares_by_kind():
    text = format_summary("mailer", {_stack(): 3, _stack("x (mailer/handlers.py:1)"): 1},
                          rate=100, seconds=1.0)
    tail = text.split("by kind of work")[1].splitlines()
    assert tail[2].split(None, 1) == ["75.00", "event loop (wake-ups, polling, reads)"]
    assert tail[3].split(None, 1) == ["25.00", "service code"]
