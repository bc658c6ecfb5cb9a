"""Far from saturation (issue 29): what a payment costs when it travels alone, and what the
stack costs with nothing to do.

``fixed_rates``  open loop (payments sent on a fixed schedule, ``run_at_rate``) at each rate
                 of ``--rates`` in turn (e.g. ``10,20,0.5x``: ``0.5x`` is half the saturation,
                 the ``saturation`` scenario's rate earlier in the same run, or
                 ``--saturation-rate``). Per rate, over the window from the first send to the
                 moment every consumer has committed every payment of that rate: the CPU per
                 payment of each process (the five services, the broker, the SMTP sink, the
                 bench's own), of the five services together, and of the whole machine (busy
                 CPU from ``/proc/stat``, every core, every process), the machine's busy
                 share, the CPU no monitored process used (other work skewing the figures),
                 and POST and end-to-end latency (from each payment's planned send time). With
                 ``--profile``, py-spy samples every service and the SMTP sink over each
                 rate's steady part (``bench/profiling.py``, one file set per rate).
``idle``         the stack with nothing to do: once every payment so far is processed and
                 ``--idle-settle`` seconds have passed, the CPU each process uses over
                 ``--idle-seconds``, as % of one core (from the scheduler's nanosecond
                 clock of every thread: a few ticks would not resolve it), and its
                 sleeps (voluntary context switches: timers and polls waking it) per second.

Pure (unit-tested in ``bench/tests``): ``parse_rates``, ``resolve_rate``, ``cpu_deltas``,
``per_payment_ms``, ``machine_window``, ``core_pct``, ``switch_rates``, ``format_rates``,
``format_idle``. The rest drives the stack.

The broker is shared with whatever else runs on the machine (other vhosts): its figures
count their traffic too. The load client's (``bench client``) are the bench's own.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import run_at_rate, summarize
from bench.pipeline import SERVICES, PipelineStack

# ---- pure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateSpec:
    """A rate of ``--rates``: payments per second, or a fraction of the saturation rate."""

    per_second: float | None = None
    of_saturation: float | None = None

    @property
    def label(self) -> str:
        if self.of_saturation is not None:
            return f"{self.of_saturation:g}x"
        return f"{self.per_second:g}"


_RATE = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<x>x)?")


def parse_rates(text: str) -> list[RateSpec]:
    """``"10,20,0.5x"`` → 10/s, 20/s, half the saturation. Raises ``ValueError`` on anything
    else, a rate of 0 or a repeated rate."""
    specs: list[RateSpec] = []
    for part in (p.strip() for p in text.split(",")):
        m = _RATE.fullmatch(part)
        if m is None or float(m["number"]) <= 0:
            raise ValueError(f"{part!r}: a rate is a number > 0 (payments/s) or a fraction of "
                             "the saturation followed by x (0.5x)")
        number = float(m["number"])
        spec = RateSpec(of_saturation=number) if m["x"] else RateSpec(per_second=number)
        if spec in specs:
            raise ValueError(f"{part!r}: given twice")
        specs.append(spec)
    if not specs:
        raise ValueError("no rate given")
    return specs


def resolve_rate(spec: RateSpec, saturation: float | None) -> float:
    """Payments per second for ``spec``; a fraction needs the saturation rate."""
    if spec.per_second is not None:
        return spec.per_second
    assert spec.of_saturation is not None
    if not saturation:
        raise ValueError(f"{spec.label}: a fraction of the saturation needs its rate: run the "
                         "saturation scenario before this one, or give --saturation-rate")
    return round(spec.of_saturation * saturation, 1)


def cpu_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each process used between two readings (processes in both; never < 0)."""
    return {name: max(0.0, after[name] - before[name]) for name in before if name in after}


def per_payment_ms(cpu_s: Mapping[str, float], payments: int) -> dict[str, float]:
    """CPU milliseconds per payment of each process, and ``services`` (the five services
    together)."""
    if payments <= 0:
        return {}
    out = {name: round(s * 1000 / payments, 3) for name, s in cpu_s.items()}
    out["services"] = round(sum(cpu_s.get(s, 0.0) for s in SERVICES) * 1000 / payments, 3)
    return out


def machine_window(busy_s: float, wall_s: float, cpus: int, monitored_s: float,
                   payments: int) -> dict[str, float | None]:
    """The whole machine over a window: how busy (1.0 = every core all the time), its busy CPU
    per payment, and the busy CPU no monitored process used (other work: skews the run)."""
    capacity = max(wall_s * cpus, 1e-9)
    other = max(0.0, busy_s - monitored_s)
    return {
        "wall_s": round(wall_s, 2),
        "busy_share": round(min(1.0, busy_s / capacity), 3),  # kernel ticks can overshoot
        "busy_cpu_s": round(busy_s, 3),
        "other_cpu_s": round(other, 3),
        "other_share": round(min(1.0, other / capacity), 3),
        "ms_per_payment": round(busy_s * 1000 / payments, 2) if payments > 0 else None,
        # the machine less the other work: what this stack and its load client cost
        "stack_ms_per_payment": round(monitored_s * 1000 / payments, 2) if payments > 0
        else None,
    }


def core_pct(cpu_s: Mapping[str, float], seconds: float) -> dict[str, float]:
    """CPU seconds over ``seconds`` → % of one core per process, and ``services`` (the five
    together)."""
    if seconds <= 0:
        raise ValueError("the window must be > 0 s")
    out = {name: round(s / seconds * 100, 3) for name, s in cpu_s.items()}
    out["services"] = round(sum(cpu_s.get(s, 0.0) for s in SERVICES) / seconds * 100, 3)
    return out


def _cell(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(labels: list[str], columns: list[Mapping[str, Any]]) -> str:
    width = max(len(label) for label in labels)
    return "\n".join(
        f"{label:<{width}}  " + "  ".join(f"{c.get(label, '-'):>9}" for c in columns)
        for label in labels
    )


def format_rates(result: Mapping[str, Any]) -> str:
    """``fixed_rates``' result as a table: one column per rate, one row per process (CPU ms
    per payment), then the machine and the latencies."""
    rates = result["rates"]
    procs: list[str] = [*SERVICES, "services"]
    procs += sorted({p for r in rates.values() for p in r["cpu_ms_per_payment"]} - set(procs))
    sleepers = [p for p in procs if p != "services"]
    columns: list[dict[str, str]] = []
    for r in rates.values():
        cpu, m, lat = r["cpu_ms_per_payment"], r["machine"], r["latency"]
        columns.append({
            "offered /s": f"{r['offered_rate']:g}",
            **{p: _cell(cpu.get(p)) for p in procs},
            "machine ms/payment": _cell(m["ms_per_payment"], 1),
            "stack ms/payment": _cell(m["stack_ms_per_payment"], 1),
            "machine busy": _cell(m["busy_share"] * 100, 1) + " %",
            "other work": _cell(m["other_share"] * 100, 1) + " %",
            "POST p50 / p99 ms": f"{_cell(lat['post']['p50'], 1)}/{_cell(lat['post']['p99'], 0)}",
            "e2e p50 / p99 ms": f"{_cell(lat['e2e']['p50'], 0)}/{_cell(lat['e2e']['p99'], 0)}",
            "load avg 1m": _cell(r["loadavg_1m"], 1),
            **{f"{p} sleeps/payment": _cell(r["switches_per_payment"]["voluntary"].get(p), 1)
               for p in sleepers},
        })
    labels = ["offered /s", *procs, "machine ms/payment", "stack ms/payment", "machine busy",
              "other work", "POST p50 / p99 ms", "e2e p50 / p99 ms", "load avg 1m",
              *(f"{p} sleeps/payment" for p in sleepers)]
    return _rows(labels, columns)


def format_idle(result: Mapping[str, Any]) -> str:
    """``idle``'s result: % of one core per process, then the machine."""
    pct = result["core_pct"]
    procs = [*SERVICES, "services", *sorted(set(pct) - {*SERVICES, "services"})]
    column = {p: _cell(pct.get(p), 3) for p in procs}
    m = result["machine"]
    column["machine busy"] = _cell(m["busy_share"] * 100, 1) + " %"
    column["other work"] = _cell(m["other_share"] * 100, 1) + " %"
    column["load avg 1m"] = _cell(result["loadavg_1m"], 1)
    sleeps = result["switches_per_second"]["voluntary"]
    column |= {f"{p} sleeps/s": _cell(sleeps.get(p), 1) for p in sleeps}
    return _rows([*procs, "machine busy", "other work", "load avg 1m",
                  *(f"{p} sleeps/s" for p in sleeps)], [column])


# ---- driving the stack ---------------------------------------------------------------------


def _switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every live thread of ``pid``. A voluntary
    one is the thread going to sleep (an event loop waiting in epoll, a worker thread on its
    queue): each wake-up costs one. Involuntary ones are preemptions: a busy machine."""
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text(encoding="ascii")
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def _run_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every live thread of ``pid`` (``/proc/<pid>/task/*/schedstat``,
    the scheduler's own clock): an idle process uses a few ticks in 20 s, below what the
    10 ms ticks of ``/proc/<pid>/stat`` resolve."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return total


def _run_s_now(st: PipelineStack) -> dict[str, float]:
    return {name: _run_ns(s.pid) / 1e9 for name, s in st.monitor.stats.items()}


def _switches_now(st: PipelineStack) -> dict[str, tuple[int, int]]:
    return {name: _switches(s.pid) for name, s in st.monitor.stats.items()}


def switch_rates(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]],
                 per: float) -> dict[str, dict[str, float]]:
    """Context switches per payment (or per second: ``per`` is the divisor) of each process:
    ``{"voluntary": {...}, "involuntary": {...}}``."""
    out: dict[str, dict[str, float]] = {"voluntary": {}, "involuntary": {}}
    if per <= 0:
        return out
    for name in before:
        if name in after:
            out["voluntary"][name] = round((after[name][0] - before[name][0]) / per, 2)
            out["involuntary"][name] = round((after[name][1] - before[name][1]) / per, 2)
    return out


def _cpu_now(st: PipelineStack) -> dict[str, float]:
    st.monitor.sample()
    return {name: s.cpu_s for name, s in st.monitor.stats.items()}


def _machine_busy_now(st: PipelineStack) -> tuple[float, float]:
    return st.monitor.busy_mark()


async def _drained(st: PipelineStack, timeout: float) -> bool:
    """Every payment posted so far processed by every consumer (polls with a deadline)."""
    return await st.completion.wait_for(st.payments_posted, timeout=timeout)


async def _one_rate(ctx: Any, st: PipelineStack, rate: float, label: str) -> dict[str, Any]:
    duration = ctx.duration
    planned: dict[str, float] = {}  # order id → planned send time (epoch s)
    wall0 = time.time()

    async def send(i: int) -> None:
        order_id = await st.post_payment(i)
        planned[order_id] = wall0 + i / rate

    profiler = ctx.options.get("profiler")
    profiling = None
    sampled_cpu: dict[str, float] = {}  # CPU s of each process while py-spy sampled it
    skip = min(3.0, duration / 5)  # the profile leaves out the first seconds of the schedule

    async def start_profile() -> None:
        nonlocal profiling
        await asyncio.sleep(skip)  # pacing: the profile covers the steady part
        profiling = profiler.tagged(f"rate{label}", f"fixed rate {rate:g}/s, steady part")
        assert st.smtp.process is not None
        sampled_cpu.update(_cpu_now(st))
        profiling.start(st.pids | {"smtp-sink": st.smtp.process.pid})

    cpu0, busy0, sw0 = _cpu_now(st), _machine_busy_now(st), _switches_now(st)
    starter = asyncio.create_task(start_profile()) if profiler is not None else None
    try:
        load = await run_at_rate(send, rate, duration, max_in_flight=1000, drain_timeout=30)
        if profiling is not None:
            profiling.interrupt()
            sampled_cpu.update(cpu_deltas(sampled_cpu, _cpu_now(st)))
        drained = await _drained(st, timeout=120)
        cpu1, busy1, sw1 = _cpu_now(st), _machine_busy_now(st), _switches_now(st)
    except BaseException:
        if starter is not None:
            starter.cancel()
        if profiling is not None:
            profiling.abandon()
        raise
    if starter is not None:
        starter.cancel()
    finished = await st.completion.finished_at()
    e2e_ms = [(finished[o] - t) * 1000 for o, t in planned.items() if o in finished]
    cpu = cpu_deltas(cpu0, cpu1)
    monitored = sum(cpu.values())
    profile = await asyncio.to_thread(profiling.collect) if profiling is not None else None
    if profile is not None:
        # samples / rate above the CPU seconds: the process was runnable but waiting for a
        # core (py-spy counts that too); the shares then overweigh where it was preempted
        for name, p in profile["services"].items():
            used = sampled_cpu.get("smtp sink" if name == "smtp-sink" else name)
            p["cpu_s_while_sampled"] = None if used is None else round(used, 3)
            p["sampled_s"] = round(p["samples"] / profile["rate_hz"], 3)
    post, e2e = summarize(load.latencies_ms), summarize(e2e_ms)
    return {
        "offered_rate": rate,
        "duration_s": duration,
        "ok": load.ok,
        "errors": load.errors,
        "error_samples": load.error_samples,
        "max_start_lag_ms": round(load.max_start_lag_ms, 2),
        "drained": drained,
        "e2e_missing": len(planned) - len(e2e_ms),
        "cpu_ms_per_payment": per_payment_ms(cpu, load.ok),
        # voluntary: the process went to sleep and was woken again (≈ event-loop wake-ups)
        "switches_per_payment": switch_rates(sw0, sw1, load.ok),
        "machine": machine_window(busy1[0] - busy0[0], busy1[1] - busy0[1], os.cpu_count() or 1,
                                  monitored, load.ok),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "latency": {"post": {k: post[k] for k in ("count", "p50", "p99", "max")},
                    "e2e": {k: e2e[k] for k in ("count", "p50", "p99", "max")}},
        "latency_samples": {"post": load.latencies_ms, "e2e": e2e_ms},
        **({"profile": profile} if profile is not None else {}),
    }


async def fixed_rates(ctx: Any) -> dict[str, Any]:
    st: PipelineStack = ctx.stack
    specs = parse_rates(ctx.options.get("rates") or "10,20,40")
    saturation = ctx.options.get("saturation_rate") or (
        (ctx.earlier.get("saturation") or {}).get("rate"))
    rates = [(spec.label, resolve_rate(spec, saturation)) for spec in specs]
    per_rate: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    for label, rate in rates:
        if not await _drained(st, timeout=120):
            raise TimeoutError("the payments before this rate were not processed in 120 s")
        print(f"  fixed rate {rate:g}/s ({label}) for {ctx.duration:g} s …", flush=True)
        result = await _one_rate(ctx, st, rate, label)
        lat = result.pop("latency_samples")
        samples[f"{label}/s post"] = lat["post"]
        samples[f"{label}/s e2e"] = lat["e2e"]
        per_rate[label] = result
    return {
        "saturation_rate": saturation,
        "rates": per_rate,
        "latency_samples_ms": samples,
    }


async def idle(ctx: Any) -> dict[str, Any]:
    st: PipelineStack = ctx.stack
    seconds = float(ctx.options.get("idle_seconds") or 20.0)
    settle = float(ctx.options.get("idle_settle") or 5.0)
    if not await _drained(st, timeout=120):
        raise TimeoutError("the payments so far were not processed in 120 s")
    await asyncio.sleep(settle)  # let the last batch's timers run out: not synchronisation
    print(f"  idle for {seconds:g} s …", flush=True)
    cpu0, busy0, sw0 = _run_s_now(st), _machine_busy_now(st), _switches_now(st)
    await asyncio.sleep(seconds)  # the measurement window itself
    cpu1, busy1, sw1 = _run_s_now(st), _machine_busy_now(st), _switches_now(st)
    cpu = cpu_deltas(cpu0, cpu1)
    wall = busy1[1] - busy0[1]
    window = machine_window(busy1[0] - busy0[0], wall, os.cpu_count() or 1,
                            sum(cpu.values()), 0)
    return {
        "settle_s": settle,
        "seconds": round(wall, 2),
        "core_pct": core_pct(cpu, wall),
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "switches_per_second": switch_rates(sw0, sw1, wall),
        "machine": {k: v for k, v in window.items() if "per_payment" not in k},
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
