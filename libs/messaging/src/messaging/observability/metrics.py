"""Prometheus metrics of the messaging paths, labelled by service (one process may host several).

The latency histograms are observed with `exemplar=trace_exemplar()`: the trace id of the
observation's span, which the OpenMetrics exposition shows per bucket (docs/observability.md).
"""

import functools
from typing import TypeVar

from opentelemetry import trace
from prometheus_client import Counter, Enum, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

CONSUMED = Counter(
    "messages_consumed", "Messages taken from a work queue", ["service", "event_type"]
)
ACKED = Counter(
    "messages_acked", "Messages acked after their outcome was committed",
    ["service", "event_type", "outcome"],
)
DUPLICATES = Counter(
    "messages_duplicates", "Messages skipped as duplicates or stale", ["service", "event_type"]
)
IGNORED = Counter(
    "messages_ignored", "Messages acked unapplied: an event type the service does not handle",
    ["service", "event_type"],
)
RETRIED = Counter(
    "messages_retried", "Messages sent to a retry wait queue", ["service", "event_type", "reason"]
)
DEAD_LETTERED = Counter(
    "messages_dead_lettered", "Messages sent to the dead-letter queue",
    ["service", "event_type", "error_class"],
)
# The broker cancelled a consumer (its queue deleted): messages routed meanwhile missed it.
CONSUMER_CANCELLED = Counter(
    "consumer_cancelled", "Consumers cancelled by the broker (their queue deleted)",
    ["service", "queue"],
)
EVENT_ID_CLASHES = Counter(
    "inbox_event_id_clashes",
    "Messages whose event id was applied before with other content (skipped, logged)",
    ["service", "event_type"],
)
HANDLER_SECONDS = Histogram(
    "handler_duration_seconds", "Time to process one message (handler + inbox commit)",
    ["service", "event_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISHED = Counter("publish_confirmed", "Publishes confirmed by the broker", ["service"])
PUBLISH_FAILED = Counter(
    "publish_failed", "Publishes not confirmed (nack, unroutable, timeout)", ["service"]
)
# Readiness says a producer accepts work; this says whether its events get out: 0 from a
# publish the broker did not confirm (a memory or disk alarm blocks the publishing
# connection) until the next confirmed one.
OUTBOX_PUBLISHING = Gauge(
    "outbox_publishing", "1 when the relay's last publish was confirmed, 0 when it was not",
    ["service"],
)
OUTBOX_PENDING = Gauge("outbox_pending_rows", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row", ["service"]
)
OUTBOX_LAG = Histogram(
    "outbox_publish_lag_seconds",
    "Time from an outbox row being written until the broker confirmed its publish",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HTTP_REQUESTS = Counter(
    "http_requests", "HTTP requests served", ["service", "method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "http_request_duration_seconds", "HTTP request duration", ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DISPATCHED = Counter(
    "events_dispatched", "Handler calls by the in-process dispatcher (synchronous mode)",
    ["handler", "event_type", "outcome"],
)
# How far behind a consumer is: from the event's `occurred_at` to a consumer taking it
# (outbox relay + broker + queue wait + any retry waits).
EVENT_LAG = Histogram(
    "event_lag_seconds", "Time from an event's occurred_at until a consumer took it",
    ["service", "event_type"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
# Refreshed on every scrape of /metrics by the consuming service (a passive declare of its
# own queues), so depths are there in every mode, with or without the broker's plugin.
QUEUE_MESSAGES = Gauge(
    "queue_messages", "Messages waiting in a queue of this service (work, retry or dlq)",
    ["service", "queue", "role"],
)
QUEUE_CONSUMERS = Gauge(
    "queue_consumers", "Consumers attached to a queue of this service, across all replicas",
    ["service", "queue", "role"],
)
SERVICE_READY = Gauge(
    "service_ready", "1 when every readiness check passes (what /readyz answers), else 0",
    ["service"],
)
# The kill switch of each consumer (messaging/operations/killswitch.py): one series per state, 1 for
# the current one. Paused: not subscribed (the work waits in the queue); probing: one
# message at a time until one succeeds.
CONSUMER_STATE = Enum(
    "consumer_state", "Kill switch state of the consumer: running, paused or probing",
    ["service"], states=["running", "paused", "probing"],
)
CONSUMER_PAUSES = Counter(
    "consumer_pauses", "Times the consumer paused, by the kill switch or an operator",
    ["service", "by"],
)


# A delivery looks up four series, a request two. `labels()` checks its arguments and takes
# the metric's lock each time; the series of a label set never changes, so it is looked up
# once (the consumer's concerns: 619 -> 589 function calls per delivery). Bounded, like
# the label sets themselves: service, event type, outcome; HTTP method, route, status.
@functools.lru_cache(maxsize=4096)
def child(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, remembered."""
    return metric.labels(*labels)


def trace_exemplar() -> dict[str, str] | None:
    """The current span's trace id as an exemplar (`{"trace_id": ...}`), or None outside a
    sampled span (probes, scrapes, housekeeping): the way from a slow bucket to its trace."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {"trace_id": trace.format_trace_id(context.trace_id)}
