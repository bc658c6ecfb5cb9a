"""``--profile``: py-spy on every service process during the saturation scenario's steady window.

One ``py-spy record --format raw`` per service process (a second sampler for py-spy's own
SVG would double the cost); from its collapsed stacks the bench writes, next to the results
JSON:

``<stem>-<service>.folded``   py-spy's collapsed stacks as recorded (line numbers kept), for
                              speedscope, inferno or flamegraph.pl
``<stem>-<service>.svg``      a flame graph of them, frames merged per function
``<stem>-<service>.txt``      the top functions by own and by total share of the samples

Pure (unit-tested in ``bench/tests``): ``parse_collapsed``, ``function_of``,
``function_shares``, ``kind_of``, ``kind_shares``, ``format_summary``, ``flamegraph_svg``.
The rest runs py-spy.

py-spy records only samples where a thread is running or runnable (no ``--idle``), so the
shares are of the process's busy time, which is what the CPU per payment counts; on a
loaded machine "runnable" includes waiting for a core. It samples with ``--nonblocking``: the
default pauses the process for every sample: on a shared 2-core machine the service then
stays stopped while py-spy waits for a core, and idle threads look busy (a thread asleep in
``time.sleep`` showed up in a fifth of the samples; in none without the pause). Without the
pause a stack can now and then be read while it changes, which shares over thousands of
samples absorb. py-spy's own CPU is recorded next to each profile.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape, quoteattr

DEFAULT_RATE = 100  # Hz: py-spy's default; each sample briefly pauses the process

Stack = tuple[str, ...]  # frames, outermost first

# ---- collapsed stacks ------------------------------------------------------------------------


def parse_collapsed(text: str) -> dict[Stack, int]:
    """``frame;frame;frame COUNT`` lines (py-spy ``--format raw``) → {stack: samples}.

    Frames may hold spaces and semicolons never; the count is after the last space. Lines
    that do not end in a count are skipped (a truncated last line of an interrupted write).
    """
    stacks: dict[Stack, int] = {}
    for line in text.splitlines():
        head, sep, count = line.rstrip().rpartition(" ")
        if not sep or not head or not count.isdigit():
            continue
        stack = tuple(head.split(";"))
        stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def function_of(frame: str) -> str:
    """``handle (messaging/inbox.py:120)`` → ``handle (messaging/inbox.py)``: samples of one
    function at different lines count as that function."""
    m = _FRAME.match(frame)
    return f"{m['name']} ({m['file']})" if m else frame


@dataclass(frozen=True)
class FunctionShare:
    function: str
    own_samples: int  # samples with this function as the innermost frame
    total_samples: int  # samples with this function anywhere on the stack (counted once)
    own_share: float  # of all samples, 0..1
    total_share: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "own_samples": self.own_samples,
            "own_pct": round(self.own_share * 100, 2),
            "total_samples": self.total_samples,
            "total_pct": round(self.total_share * 100, 2),
        }


def function_shares(stacks: Mapping[Stack, int]) -> list[FunctionShare]:
    """Own and total samples per function, most own samples first."""
    total = sum(stacks.values())
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for stack, count in stacks.items():
        functions = [function_of(f) for f in stack]
        if not functions:
            continue
        own[functions[-1]] = own.get(functions[-1], 0) + count
        for fn in set(functions):  # recursion counts once per sample
            inclusive[fn] = inclusive.get(fn, 0) + count
    rows = [
        FunctionShare(fn, own.get(fn, 0), n, own.get(fn, 0) / total, n / total)
        for fn, n in inclusive.items()
    ]
    rows.sort(key=lambda r: (-r.own_samples, -r.total_samples, r.function))
    return rows


def top_by_own(rows: Iterable[FunctionShare], n: int = 15) -> list[FunctionShare]:
    return sorted(rows, key=lambda r: (-r.own_samples, r.function))[:n]


def top_by_total(rows: Iterable[FunctionShare], n: int = 15) -> list[FunctionShare]:
    """The functions with the largest total share, leaving out those on every sample (the
    entry point, the event loop's run): 100 % says nothing about where the time goes."""
    rows = [r for r in rows if r.total_share < 1.0]
    return sorted(rows, key=lambda r: (-r.total_samples, r.function))[:n]


def format_summary(
    service: str, stacks: Mapping[Stack, int], *, rate: int, seconds: float, n: int = 15
) -> str:
    """The text next to the flame graph: top functions by own, then by total share."""
    rows = function_shares(stacks)
    samples = sum(stacks.values())
    lines = [
        f"{service}: {samples} samples on CPU in {seconds:.1f} s at {rate} Hz "
        f"(busy {samples / (rate * seconds) * 100 if seconds else 0:.0f} % of the window: "
        "samples / (rate x seconds), threads added up)",
        "",
        f"top {n} by own share (innermost frame)",
        f"{'own %':>7}  {'total %':>7}  function",
    ]
    lines += [f"{r.own_share * 100:7.2f}  {r.total_share * 100:7.2f}  {r.function}"
              for r in top_by_own(rows, n)]
    lines += [
        "",
        f"top {n} by total share (anywhere on the stack; functions on every sample left out)",
        f"{'total %':>7}  {'own %':>7}  function",
    ]
    lines += [f"{r.total_share * 100:7.2f}  {r.own_share * 100:7.2f}  {r.function}"
              for r in top_by_total(rows, n)]
    lines += ["", "by kind of work (innermost frame that says; bench/profiling.py CATEGORIES)",
              f"{'share %':>7}  kind"]
    lines += [f"{share * 100:7.2f}  {kind}" for kind, _n, share in kind_shares(stacks)]
    return "\n".join(lines) + "\n"


# ---- kinds of work ---------------------------------------------------------------------------

# (kind, pattern on ``function (file)``), tried in this order on each frame from the innermost
# outwards; the first frame that matches one gives the sample its kind. Frames of generic
# helpers (``_PASS``) are passed over, so a ``contextlib`` ``__exit__`` counts as what it
# wraps (a span, a session). ``Runner.run`` as the innermost frame is uvloop's own C code
# (polling, waking up, reading sockets, running callbacks): py-spy sees no frame below it.
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        ("event loop (wake-ups, polling, reads)",
         r"^Runner\.run \(asyncio/runners\.py\)$|\((asyncio/(base_events|events|"
         r"selector_events)\.py|selectors\.py)\)$|^_run_once "),
        ("socket writes", r"^StreamWriter\.(write|writelines|drain) |\(socket\.py\)$"),
        ("task creation", r"^(create_task|ensure_future|gather|Task\.__init__|"
         r"TaskGroup\.create_task|_ensure_future) \(asyncio/"),
        ("asyncio helpers (timeouts, shields, locks, queues)", r"\(asyncio/"),
        ("spans (OpenTelemetry)", r"opentelemetry|\((trace|context|attributes|propagate|"
         r"propagators|baggage|sdk|asgi)/|_decorator\.py\)$|_semconv\.py\)$|composite\.py\)$|"
         r"fastapi/telemetry/|messaging/observability/(telemetry|instrumentation|correlation)"),
        ("metrics", r"prometheus_client/|messaging/observability/metrics"),
        ("logs", r"\(logging/|messaging/chassis/(logs|log_tally)\.py"),
        ("SQL driver (SQLite, PostgreSQL execution)",
         r"messaging/chassis/db\.py|aiosqlite/|asyncpg/|sqlite3/"),
        ("SQL sessions, transactions (SQLAlchemy)", r"sqlalchemy/|greenlet"),
        ("AMQP client (aio-pika, aiormq, pamqp)", r"aio_pika/|aiormq/|pamqp/"),
        ("HTTP server (uvicorn, h11, FastAPI)", r"uvicorn/|h11/|httptools/|starlette/|fastapi/"),
        ("validation, serialisation (pydantic, json, contracts)",
         r"pydantic|\(json/|contracts/"),
        ("SMTP (client and sink)", r"aiosmtpd/|\(email/|smtplib|mailer/smtp\.py"),
        ("messaging core (inbox, outbox, consumer, relay)", r"\(messaging/"),
        ("service code", r"\((payment|points|mailer|audit|shipping|devstack)/"),
    )
)
_PASS = re.compile(r"\((contextlib|functools|enum|copy|weakref|_weakrefset|typing|dataclasses|"
                   r"uuid|abc|<frozen [^>]*>|<string>)(\.py)?\)$|\(re/")
OTHER = "other"


def kind_of(stack: Stack) -> str:
    """The kind of work a sample was doing (``CATEGORIES``), or ``OTHER``."""
    for frame in reversed(stack):
        fn = function_of(frame)
        if _PASS.search(fn):
            continue
        for kind, pattern in CATEGORIES:
            if pattern.search(fn):
                return kind
    return OTHER


def kind_shares(stacks: Mapping[Stack, int]) -> list[tuple[str, int, float]]:
    """(kind, samples, share of all samples), largest first."""
    total = sum(stacks.values())
    counts: dict[str, int] = {}
    for stack, count in stacks.items():
        kind = kind_of(stack)
        counts[kind] = counts.get(kind, 0) + count
    rows = [(k, n, n / total) for k, n in counts.items()] if total else []
    return sorted(rows, key=lambda r: (-r[1], r[0]))


# ---- flame graph -----------------------------------------------------------------------------


@dataclass
class _Node:
    name: str
    value: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(stacks: Mapping[Stack, int]) -> _Node:
    root = _Node("all")
    for stack, count in stacks.items():
        root.value += count
        node = root
        for frame in stack:
            fn = function_of(frame)
            node = node.children.setdefault(fn, _Node(fn))
            node.value += count
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    """flamegraph.pl's warm palette, from a hash of the name: stable across runs."""
    h = zlib.crc32(name.encode())
    v1, v2, v3 = (h & 0xFF) / 255, ((h >> 8) & 0xFF) / 255, ((h >> 16) & 0xFF) / 255
    return f"rgb({205 + int(50 * v3)},{int(230 * v1)},{int(55 * v2)})"


def flamegraph_svg(
    stacks: Mapping[Stack, int], title: str, *, width: int = 1200, frame_height: int = 16,
    min_width: float = 0.1,
) -> str:
    """A static flame graph (root at the bottom); each frame's tooltip gives its samples."""
    root = _tree(stacks)
    total = root.value
    top_margin, bottom_margin, font_px = 36, 10, 12
    depth = _depth(root)
    height = top_margin + depth * frame_height + bottom_margin
    out = [
        '<?xml version="1.0" standalone="no"?>',
        f'<svg version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f8f8"/>',
        f'<text x="{width / 2}" y="22" font-size="16" font-family="Verdana" '
        f'text-anchor="middle">{escape(title)}</text>',
    ]
    if total == 0:
        out.append(f'<text x="{width / 2}" y="{top_margin + 14}" font-size="{font_px}" '
                   'font-family="Verdana" text-anchor="middle">no samples</text>')
    scale = (width - 20) / total if total else 0.0

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.value * scale
        if w < min_width:
            return
        y = height - bottom_margin - (level + 1) * frame_height
        pct = node.value / total * 100
        label = f"{node.name} ({node.value} samples, {pct:.2f} %)"
        out.append(f"<g><title>{escape(label)}</title>"
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{frame_height - 1}" '
                   f'fill={quoteattr(_colour(node.name))} rx="2"/>')
        fits = int((w - 6) / (font_px * 0.6))
        if fits >= 3:
            text = node.name if len(node.name) <= fits else node.name[: fits - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + frame_height - 4}" '
                       f'font-size="{font_px}" font-family="Verdana">{escape(text)}</text>')
        out.append("</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda c: c.name):  # alphabetical
            draw(child, child_x, level + 1)
            child_x += child.value * scale

    if total:
        draw(root, 10.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---- running py-spy ---------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the venv's bin, not necessarily on PATH), else PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


@dataclass
class _Sampler:
    service: str
    pid: int
    raw: Path
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]
    cpu_s: float | None = None


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    return (errors or lines or ["no output"])[0][:200]


class ServiceProfiler:
    """``start(pids)`` at the start of the steady window, ``interrupt()`` at its end,
    ``collect()`` once the run is over: writes the files, returns what the JSON records."""

    def __init__(self, py_spy: str, directory: Path, stem: str, rate: int = DEFAULT_RATE,
                 window: str = "saturation, steady window"):
        self.py_spy, self.directory, self.stem, self.rate = py_spy, directory, stem, rate
        self.window = window  # what the samples cover, in each flame graph's title
        self._samplers: list[_Sampler] = []
        self._started_at: float | None = None
        self._seconds = 0.0

    def tagged(self, tag: str, window: str | None = None) -> ServiceProfiler:
        """A profiler like this one whose files carry ``tag`` after the stem (one set of files
        per window when a scenario profiles several, e.g. each fixed rate)."""
        return ServiceProfiler(self.py_spy, self.directory, f"{self.stem}-{tag}", self.rate,
                               window or tag)

    def path(self, service: str, suffix: str) -> Path:
        return self.directory / f"{self.stem}-{service}{suffix}"

    def start(self, pids: Mapping[str, int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._started_at = time.monotonic()
        for service, pid in pids.items():
            raw = self.path(service, ".folded")
            err = tempfile.TemporaryFile()  # noqa: SIM115 - read in collect(), closed there
            proc = subprocess.Popen(
                [self.py_spy, "record", "--pid", str(pid), "--rate", str(self.rate),
                 "--nonblocking", "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,  # a Ctrl-C of the bench reaches it only through us
            )
            self._samplers.append(_Sampler(service, pid, raw, proc, err))

    def interrupt(self) -> None:
        """End the sampling now (SIGINT: py-spy writes its file and exits)."""
        if self._started_at is not None:
            self._seconds = time.monotonic() - self._started_at
        for s in self._samplers:
            if s.process.poll() is None:
                s.process.send_signal(signal.SIGINT)

    def collect(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the samplers, write flame graph and summary per service.

        Returns ``{"rate_hz", "window_s", "services": {svc: {...files, samples}},
        "failed": {svc: reason}}``; a service whose sampler failed has no files.
        """
        if self._started_at is not None and not self._seconds:
            self.interrupt()
        deadline = time.monotonic() + timeout
        services: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for s in self._samplers:
            # its CPU: what reaping it adds to this process's children's (nothing else of
            # ours is reaped meanwhile: the stack's processes outlive the scenario)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                rc = s.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.process.kill()
                rc = s.process.wait()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            s.cpu_s = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                            3)
            s.stderr.seek(0)
            err = s.stderr.read().decode(errors="replace")
            s.stderr.close()
            if not s.raw.exists():
                failed[s.service] = f"py-spy exited with {rc}: {_first_error_line(err)}"
                continue
            stacks = parse_collapsed(s.raw.read_text(errors="replace"))
            svg, txt = self.path(s.service, ".svg"), self.path(s.service, ".txt")
            samples = sum(stacks.values())
            svg.write_text(flamegraph_svg(
                stacks, f"{s.service}: {samples} samples at {self.rate} Hz over "
                f"{self._seconds:.1f} s ({self.window})"), encoding="utf-8")
            txt.write_text(format_summary(s.service, stacks, rate=self.rate,
                                          seconds=self._seconds), encoding="utf-8")
            rows = function_shares(stacks)
            services[s.service] = {
                "pid": s.pid,
                "samples": samples,
                "flamegraph": svg.name,
                "summary": txt.name,
                "collapsed": s.raw.name,
                "py_spy_cpu_s": s.cpu_s,
                "top_own": [r.as_dict() for r in top_by_own(rows)],
                "top_total": [r.as_dict() for r in top_by_total(rows)],
                "kinds": {k: round(share * 100, 2) for k, _n, share in kind_shares(stacks)},
            }
        self._samplers.clear()
        return {"rate_hz": self.rate, "window_s": round(self._seconds, 2),
                "services": services, "failed": failed}

    def abandon(self) -> None:
        """The scenario failed: stop every sampler, keep nothing."""
        for s in self._samplers:
            if s.process.poll() is None:
                s.process.kill()
            s.process.wait()
            s.stderr.close()
        self._samplers.clear()


def failure_line(failed: Mapping[str, str], wanted: Iterable[str]) -> str | None:
    """One line for the samplers that failed (``None`` when none did)."""
    if not failed:
        return None
    wanted = list(wanted)
    reasons = sorted(set(failed.values()))
    if set(failed) >= set(wanted):
        return (f"profile: py-spy failed for every service ({'; '.join(reasons)}); "
                "continuing without profiles")
    return (f"profile: py-spy failed for {', '.join(sorted(failed))} ({'; '.join(reasons)}); "
            "no profile for those")
