"""The console's Prometheus metrics (beside the common ones of messaging.observability.metrics)."""

from prometheus_client import Counter, Gauge

PARKED = Gauge(
    "console_dead_letters_parked", "Dead letters parked in the console, waiting for someone",
    ["service", "error_class"],
)
PARKED_TOTAL = Counter(
    "console_dead_letters_ingested", "Dead letters taken from the DLQs into the console",
    ["service", "error_class"],
)
REPLAYED = Counter(
    "console_replayed", "Dead letters replayed to their work queue (confirmed by the broker)",
    ["service"],
)
