"""Logging: one JSON object per line, carrying the trace and the correlation id.

When stderr is a terminal the same fields are printed as a readable line instead.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

from messaging.observability import correlation


class _ContextFilter(logging.Filter):
    """Stamps every record with the service, the current trace/span and the correlation id."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.service = self.service
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else None
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else None
        record.correlation_id = correlation.get()
        return True


# What `json.dumps(entry, ensure_ascii=False)` writes, without making an encoder per line
# (json.dumps reuses one only for its default arguments).
_encode = json.JSONEncoder(ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
            "correlation_id": getattr(record, "correlation_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)-7s %(service)s [%(correlation_id)s] %(name)s: %(message)s"
        )


def setup_logging(service: str, level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Route all logging (ours, uvicorn's, aio-pika's) through one stderr handler."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # No formatter here shows the thread or the process: not looked up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Python warnings too, so that every line of the service's output is one JSON object.
    logging.captureWarnings(True)
    # The AMQP client is chatty about reconnects at INFO; its warnings are enough.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
