"""Reusable pieces of the benchmark: pure arithmetic first, then the thin I/O helpers.

Pure (unit-tested in ``bench/tests``):
    ``percentile`` / ``summarize``      latency percentiles (linear interpolation, like numpy)
    ``RateSchedule``                    open-loop fixed-rate arithmetic (when is send *i* due)
    ``Target`` / ``evaluate_targets``   targets as data, evaluated against a results dict
    ``format_table``                    the printed table (met / MISSED / not run, ratio to ceiling)
    ``downsample_sorted``               keep a latency distribution small enough for the JSON

I/O (thin, used by scenarios and the runner):
    ``throwaway_vhost``                 create + delete a vhost through the management API
    ``run_at_rate``                     asyncio load loop at a fixed rate for a bounded duration
    ``ProcessMonitor``                  CPU seconds and peak RSS of a set of processes (psutil)
    ``renice``                          scheduling priority of the stack's processes (--nice)
    ``wait_until``                      poll a condition with a deadline (never a fixed sleep)
    ``write_results`` / ``plot_results`` ``bench/results/<timestamp>.json`` and ``.png``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import operator
import os
import platform
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------------------------
# percentiles
# --------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linearly interpolated.

    Same definition as ``numpy.percentile(..., method="linear")``: rank ``(n - 1) * q / 100``.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return float(sorted_values[lo])
    frac = rank - lo
    return float(sorted_values[lo]) + (float(sorted_values[hi]) - float(sorted_values[lo])) * frac


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99, max (and min) of a sample; ``None`` fields when empty."""
    data = sorted(values)
    if not data:
        return {
            "count": 0,
            "mean": None,
            "min": None,
            "p50": None,
            "p95": None,
            "p99": None,
            "max": None,
        }
    return {
        "count": len(data),
        "mean": sum(data) / len(data),
        "min": float(data[0]),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "max": float(data[-1]),
    }


def downsample_sorted(values: Iterable[float], max_points: int = 2000) -> list[float]:
    """At most ``max_points`` values evenly spread over the sorted sample, min and max kept.

    Enough to redraw the distribution (CDF) from the JSON without storing every sample.
    """
    data = sorted(values)
    n = len(data)
    if n <= max_points:
        return [float(v) for v in data]
    if max_points < 2:
        raise ValueError("max_points must be >= 2")
    step = (n - 1) / (max_points - 1)
    return [float(data[round(i * step)]) for i in range(max_points)]


# --------------------------------------------------------------------------------------------
# fixed-rate schedule (open loop: the schedule never waits for responses)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateSchedule:
    """Send ``i`` (0-based) is due ``i / rate`` seconds after the start, for ``duration`` s.

    Open loop: a slow response does not delay the next send, and latency is measured from the
    *intended* send time (``due_at(i)``), so a stalled system cannot hide its stall
    (no coordinated omission).
    """

    rate: float
    duration: float

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0, got {self.duration}")

    @property
    def total(self) -> int:
        """How many sends the whole schedule holds (those due strictly before ``duration``)."""
        return math.ceil(self.rate * self.duration - 1e-9)

    def due_at(self, i: int) -> float:
        """Seconds after the start at which send ``i`` is due."""
        if i < 0:
            raise ValueError("send index must be >= 0")
        return i / self.rate

    def due_by(self, elapsed: float) -> int:
        """How many sends are due once ``elapsed`` seconds have passed (capped at ``total``)."""
        if elapsed < 0:
            return 0
        return min(self.total, math.floor(elapsed * self.rate + 1e-9) + 1)

    def lag(self, i: int, elapsed: float) -> float:
        """How late (s) send ``i`` starts if it starts at ``elapsed``; 0 when on time."""
        return max(0.0, elapsed - self.due_at(i))


@dataclass
class LoadResult:
    """What ``run_at_rate`` observed; latencies in milliseconds from the intended send time."""

    scheduled: int
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    max_start_lag_ms: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def run_at_rate(
    send: Callable[[int], Awaitable[Any]],
    rate: float,
    duration: float,
    *,
    max_in_flight: int = 1000,
    drain_timeout: float = 30.0,
    on_tick: Callable[[int], None] | None = None,
) -> LoadResult:
    """Call ``send(i)`` at ``rate`` per second for ``duration`` seconds, each as its own task.

    Latency of each call is measured from its scheduled time. ``max_in_flight`` bounds the
    concurrent calls (a saturated system then shows up as start lag rather than an unbounded
    task pile). After the schedule, in-flight calls get ``drain_timeout`` seconds to finish;
    the rest are cancelled and counted as errors.
    """
    schedule = RateSchedule(rate, duration)
    result = LoadResult(scheduled=schedule.total)
    gate = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(i: int) -> None:
        try:
            await send(i)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and sampled
            result.errors += 1
            if len(result.error_samples) < 10:
                result.error_samples.append(f"{type(exc).__name__}: {exc}")
        else:
            result.ok += 1
            result.latencies_ms.append((loop.time() - t0 - schedule.due_at(i)) * 1000.0)
        finally:
            gate.release()

    for i in range(schedule.total):
        delay = t0 + schedule.due_at(i) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing to the schedule, not synchronisation
        await gate.acquire()
        lag = schedule.lag(i, loop.time() - t0)
        result.max_start_lag_ms = max(result.max_start_lag_ms, lag * 1000.0)
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        result.sent += 1
        if on_tick is not None:
            on_tick(i)
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            result.errors += len(pending)
    result.wall_s = loop.time() - t0
    return result


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def lookup(results: Mapping[str, Any], path: str) -> Any:
    """``lookup(r, "a.b.c")`` → ``r["a"]["b"]["c"]``, or None when any part is absent."""
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True)
class Target:
    """A target as data: ``value(metric) [/ value(relative_to)] <op> threshold``.

    ``metric`` and ``relative_to`` are dotted paths into the scenarios' results.
    """

    name: str
    metric: str
    op: str
    threshold: float
    unit: str = ""
    relative_to: str | None = None

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown operator {self.op!r}; one of {sorted(_OPS)}")


@dataclass(frozen=True)
class TargetResult:
    name: str
    status: str  # "met" | "missed" | "not run"
    value: float | None
    op: str
    threshold: float
    unit: str

    @property
    def met(self) -> bool | None:
        return None if self.status == "not run" else self.status == "met"


def evaluate_target(target: Target, results: Mapping[str, Any]) -> TargetResult:
    value = lookup(results, target.metric)
    if value is not None and target.relative_to is not None:
        ref = lookup(results, target.relative_to)
        value = None if ref in (None, 0) else float(value) / float(ref)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        status = "not run"
        value = None
    else:
        value = float(value)
        status = "met" if _OPS[target.op](value, target.threshold) else "missed"
    return TargetResult(target.name, status, value, target.op, target.threshold, target.unit)


def evaluate_targets(targets: Iterable[Target], results: Mapping[str, Any]) -> list[TargetResult]:
    return [evaluate_target(t, results) for t in targets]


def ratio_to_ceiling(rate: float | None, ceiling: float | None) -> float | None:
    if rate is None or not ceiling:
        return None
    return rate / ceiling


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if unit == "%":
            return f"{value * 100:.1f} %"
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.3g}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), "  ".join("-" * w for w in widths)]
    out += [line.format(*row) for row in rows]
    return out


def format_table(
    rates: Sequence[tuple[str, float | None]],
    ceiling_rate: float | None,
    resources: Sequence[tuple[str, float | None, float | None]] = (),
    targets: Sequence[TargetResult] = (),
    latencies: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> str:
    """The report: throughput rows with their ratio to the ceiling, CPU/RSS, then targets.

    ``rates``: (label, msgs/s); ``resources``: (process, cpu seconds, peak RSS MB);
    ``latencies``: (label, ``summarize()`` result).
    Every target is shown: met, MISSED, or not run — a miss is never hidden.
    """
    lines: list[str] = []
    if rates:
        rows = []
        for label, rate in rates:
            ratio = ratio_to_ceiling(rate, ceiling_rate)
            rows.append([label, _fmt(rate, "msg/s"), _fmt(ratio, "%")])
        lines += _grid(["throughput", "sustained", "of ceiling"], rows)
    if latencies:
        lines.append("")
        rows = [
            [label, str(s.get("count", 0))]
            + [_fmt(s.get(k), "ms") for k in ("p50", "p95", "p99", "max")]
            for label, s in latencies
        ]
        lines += _grid(["latency", "n", "p50", "p95", "p99", "max"], rows)
    if resources:
        lines.append("")
        rows = [[name, _fmt(cpu, "s"), _fmt(rss, "MB")] for name, cpu, rss in resources]
        lines += _grid(["process", "CPU", "peak RSS"], rows)
    if targets:
        lines.append("")
        rows = []
        for t in targets:
            shown = {"met": "met", "missed": "MISSED", "not run": "not run"}[t.status]
            rows.append(
                [t.name, _fmt(t.value, t.unit), f"{t.op} {_fmt(t.threshold, t.unit)}", shown]
            )
        lines += _grid(["target", "measured", "wanted", "result"], rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# I/O helpers
# --------------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Broker:
    """Where the broker and its management API are (loopback only)."""

    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    mgmt_url: str = "http://127.0.0.1:15672"
    user: str = "guest"
    password: str = "guest"

    def amqp_url(self, vhost: str = "/") -> str:
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.amqp_host}:{self.amqp_port}/{quote(vhost, safe='')}"
        )

    def version(self) -> str | None:
        import httpx

        try:
            r = httpx.get(
                f"{self.mgmt_url}/api/overview", auth=(self.user, self.password), timeout=5
            )
            r.raise_for_status()
            return r.json().get("rabbitmq_version")
        except httpx.HTTPError:
            return None


@contextlib.contextmanager
def throwaway_vhost(broker: Broker, prefix: str = "bench") -> Iterator[str]:
    """Create ``<prefix>-<random>`` with full permissions for the broker user; delete it after."""
    import httpx

    name = f"{prefix}-{secrets.token_hex(4)}"
    quoted = quote(name, safe="")
    with httpx.Client(
        base_url=broker.mgmt_url, auth=(broker.user, broker.password), timeout=15
    ) as client:
        client.put(f"/api/vhosts/{quoted}").raise_for_status()
        try:
            client.put(
                f"/api/permissions/{quoted}/{quote(broker.user, safe='')}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            ).raise_for_status()
            yield name
        finally:
            client.delete(f"/api/vhosts/{quoted}").raise_for_status()


def _peak_rss_bytes(pid: int) -> int | None:
    """Linux high-water mark of resident memory (``VmHWM``), which sampling could miss."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass
class ProcessStats:
    name: str
    pid: int
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    peak_rss_bytes: int = 0
    # CPU already used when monitoring started (e.g. the broker's uptime); subtracted.
    cpu_base_user_s: float = 0.0
    cpu_base_system_s: float = 0.0

    @property
    def cpu_s(self) -> float:
        return (self.cpu_user_s - self.cpu_base_user_s) + (
            self.cpu_system_s - self.cpu_base_system_s
        )

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_user_s": round(self.cpu_user_s - self.cpu_base_user_s, 3),
            "cpu_system_s": round(self.cpu_system_s - self.cpu_base_system_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


class ProcessMonitor:
    """CPU seconds and peak RSS of named processes, sampled with psutil.

    Call ``sample()`` periodically and once more just before the processes exit. Peak RSS is
    the max of the sampled RSS and the kernel's high-water mark. ``since_now=True`` counts only
    CPU used from ``add`` on (for a long-running process such as the broker). It also tracks
    the whole machine's busy CPU since it was created, so a run disturbed by other work shows.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.stats: dict[str, ProcessStats] = {}
        self._procs: dict[str, Any] = {}
        self._machine_start = self._machine_busy()
        self._machine_last = self._machine_start
        self._wall_start = self._wall_last = time.monotonic()

    def _machine_busy(self) -> tuple[float, float]:
        t = self._psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle, idle

    @property
    def machine_busy_s(self) -> float:
        """CPU seconds the whole machine (all cores, every process) spent busy so far."""
        return self._machine_last[0] - self._machine_start[0]

    @property
    def other_cpu_s(self) -> float:
        """Busy CPU seconds not used by the monitored processes: other work skewing the run."""
        return max(0.0, self.machine_busy_s - sum(s.cpu_s for s in self.stats.values()))

    def add(self, name: str, pid: int, *, since_now: bool = False, children: bool = True) -> None:
        """``children=False``: leave out the CPU of the children it waited for (the bench's
        own process: its children are the stack and the py-spy samplers, measured apart)."""
        proc = self._psutil.Process(pid)
        stats = ProcessStats(name, pid)
        if since_now:
            # a long-running process: count only from now on, and its RSS from now on
            t = proc.cpu_times()
            stats.cpu_base_user_s = t.user + (t.children_user if children else 0.0)
            stats.cpu_base_system_s = t.system + (t.children_system if children else 0.0)
            stats.peak_rss_bytes = proc.memory_info().rss
        self._procs[name] = (proc, not since_now, children)
        self.stats[name] = stats
        self.sample()

    def sample(self) -> None:
        self._machine_last = self._machine_busy()
        self._wall_last = time.monotonic()
        for name, (proc, use_hwm, children) in self._procs.items():
            stats = self.stats[name]
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    # children that are threads of work (e.g. multiprocessing helpers) count too
                    stats.cpu_user_s = t.user + (t.children_user if children else 0.0)
                    stats.cpu_system_s = t.system + (t.children_system if children else 0.0)
                    rss = proc.memory_info().rss
                hwm = _peak_rss_bytes(proc.pid) if use_hwm else None
                stats.peak_rss_bytes = max(stats.peak_rss_bytes, rss, hwm or 0)
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: s.as_dict() for name, s in self.stats.items()}

    def busy_mark(self) -> tuple[float, float]:
        """(the machine's busy CPU seconds, monotonic seconds) now: `busy_share_since` takes it."""
        return self._machine_busy()[0], time.monotonic()

    def busy_share_since(self, mark: tuple[float, float]) -> float:
        """How busy the whole machine was since `mark`: 1.0 is every core busy all the time.
        The CPU per payment spreads a run's CPU over all of it (the drain too); this says
        whether a window was CPU-bound."""
        busy, now = self.busy_mark()
        capacity = max((now - mark[1]) * (os.cpu_count() or 1), 1e-9)
        return min(1.0, (busy - mark[0]) / capacity)  # the kernel counts in ticks: can overshoot

    def machine_dict(self) -> dict[str, float]:
        capacity = (self._wall_last - self._wall_start) * (os.cpu_count() or 1)
        return {
            "capacity_cpu_s": round(capacity, 2),
            "busy_cpu_s": round(self.machine_busy_s, 2),
            "other_cpu_s": round(self.other_cpu_s, 2),
        }


def renice(pids: Iterable[int], niceness: int) -> list[int]:
    """Set the scheduling niceness of every thread of each process (Linux counts it per
    thread; a process's threads started before this keep theirs otherwise). Returns the pids
    it could not set (gone, or not allowed: below 0 needs root). Used with ``--nice``: on a
    machine shared with other work, the stack then gets a core when it needs one, as it would
    on a quiet machine."""
    failed = []
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            for tid in tids:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except (OSError, ValueError):
            failed.append(pid)
    return failed


def find_broker_pid(port: int) -> int | None:
    """The process listening on the broker's AMQP `port` in this network namespace, for
    CPU/RSS accounting; read-only. By port, not by name: with several Erlang nodes on the
    machine, the first ``beam.smp`` may be another node."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def machine_info() -> dict[str, Any]:
    import psutil

    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # other work on the machine skews every figure: recorded so a noisy run shows
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def git_commit(repo: Path) -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def results_stem(now: float | None = None, label: str | None = None) -> str:
    """``20261129T120000Z`` (or ``20261129T120000Z-<label>``): the file name for a run's JSON,
    PNG and profiles (UTC, sortable)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{label}" if label else stamp


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_results(report: Mapping[str, Any], stem: str, directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def plot_results(
    latencies_ms: Mapping[str, Sequence[float]],
    throughput: Mapping[str, Sequence[Sequence[float]]],
    path: Path,
    title: str = "Mini EC benchmark",
) -> Path:
    """PNG: left, latency CDF per label (log x); right, throughput over time per scenario.

    ``latencies_ms``: label → samples; ``throughput``: scenario → [(t_seconds, msgs/s), ...].
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(13, 5))
    drawn = False
    for label, samples in latencies_ms.items():
        data = sorted(v for v in samples if v is not None and v > 0)
        if not data:
            continue
        n = len(data)
        ax_lat.step(
            data,
            [(i + 1) / n for i in range(n)],
            where="post",
            label=f"{label} (p99 {percentile(data, 99):.1f} ms)",
        )
        drawn = True
    ax_lat.set_title("latency distribution (CDF)")
    ax_lat.set_xlabel("latency (ms, log)")
    ax_lat.set_ylabel("fraction ≤ x")
    if drawn:
        ax_lat.set_xscale("log")
        ax_lat.legend(fontsize="small")
    else:
        ax_lat.text(
            0.5, 0.5, "no latency samples", ha="center", va="center", transform=ax_lat.transAxes
        )
    ax_lat.grid(True, which="both", alpha=0.3)

    for label, points in throughput.items():
        if points:
            xs, ys = zip(*[(p[0], p[1]) for p in points], strict=True)
            ax_tp.plot(xs, ys, label=label)
    ax_tp.set_title("throughput over time")
    ax_tp.set_xlabel("time (s)")
    ax_tp.set_ylabel("messages / s")
    ax_tp.set_ylim(bottom=0)
    if throughput:
        ax_tp.legend(fontsize="small")
    ax_tp.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def rate_series(samples: Sequence[tuple[float, int]], window: float = 1.0) -> list[list[float]]:
    """[(t, cumulative count), ...] → [[t, msgs/s over the preceding ``window``], ...]."""
    out: list[list[float]] = []
    j = 0
    for t, count in samples:
        while j < len(samples) and samples[j][0] < t - window:
            j += 1
        t0, c0 = samples[j]
        if t > t0:
            out.append([round(t, 3), (count - c0) / (t - t0)])
    return out


def steady_rate(
    samples: Sequence[tuple[float, int]], skip_start: float, skip_end: float = 0.0
) -> float | None:
    """Mean rate between ``skip_start`` s after the first sample and ``skip_end`` s before the
    last one: the sustained rate without the warm-up ramp and the tail drain."""
    if len(samples) < 2:
        return None
    t_first, t_last = samples[0][0], samples[-1][0]
    window = [(t, c) for t, c in samples if t_first + skip_start <= t <= t_last - skip_end]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None
    (ta, ca), (tb, cb) = window[0], window[-1]
    return (cb - ca) / (tb - ta)
