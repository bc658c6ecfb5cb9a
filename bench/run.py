"""Runner: ``python -m bench [--only NAME,...] [--duration S] [--profile] ...`` (``--help``).

A scenario is a function ``scenario(ctx: BenchContext) -> dict`` (or ``async def``) registered
in ``SCENARIOS``. Its result dict may hold, by convention:

``rate``                  headline sustained rate (msgs/s): shown with its ratio to the ceiling
``timeseries``            ``[[t_seconds, msgs_per_s], ...]``: plotted as throughput over time
``latency_samples_ms``    ``{label: [ms, ...]}``: the runner summarises it into
                          ``latency_ms.<label>`` = {count, mean, min, p50, p95, p99, max}, plots
                          it, and keeps at most 2000 evenly spread samples in the JSON
``resources``             ``{process: {cpu_s, peak_rss_mb, ...}}`` (see ``ProcessMonitor``)

anything else is kept in the JSON as is. Targets (``TARGETS``) are dotted paths into
``{scenario_name: result}``; a target whose scenario did not run is shown as "not run".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ceiling, interpreter, pipeline, profiling
from bench.harness import (
    RESULTS_DIR,
    Broker,
    Target,
    downsample_sorted,
    evaluate_targets,
    format_table,
    git_commit,
    machine_info,
    plot_results,
    results_stem,
    summarize,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("payment", "points", "mailer", "audit")


@dataclass
class BenchContext:
    """What a scenario gets. The pipeline scenarios will find the running stack here."""

    broker: Broker
    duration: float  # the per-scenario time budget (s) asked for on the command line
    ceiling_duration: float
    progress: bool = True
    vhost: str | None = None  # the stack's throwaway vhost, once the runner starts a stack
    base_urls: dict[str, str] = field(default_factory=dict)  # service → http://127.0.0.1:port
    pids: dict[str, int] = field(default_factory=dict)  # service → pid (CPU / RSS accounting)
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {"db": "sqlite"}
    stack: Any = None  # the running pipeline.PipelineStack, for scenarios that need it

    @property
    def amqp_url(self) -> str:
        return self.broker.amqp_url(self.vhost or "/")


Scenario = Callable[[BenchContext], Any]

# name → (function, needs the service stack)
SCENARIOS: dict[str, tuple[Scenario, bool]] = {
    "ceiling": (ceiling.scenario, False),
    "saturation": (pipeline.saturation, True),
    "fixed_rate": (pipeline.fixed_rate, True),
    "service_resources": (pipeline.service_resources, True),
    # starts its own stack (and the synchronous mode) with a slow SMTP server
    "slow_mail": (pipeline.slow_mail, False),
}

TARGETS: list[Target] = [
    Target(
        "pipeline saturation ≥ 50 % of ceiling",
        "saturation.rate",
        ">=",
        0.5,
        "%",
        relative_to="ceiling.rate",
    ),
    Target("fixed rate: POST p99 < 50 ms", "fixed_rate.latency_ms.post.p99", "<", 50, "ms"),
    Target("fixed rate: end-to-end p99 < 500 ms", "fixed_rate.latency_ms.e2e.p99", "<", 500, "ms"),
    *[
        Target(
            f"{svc}: peak RSS < 150 MB",
            f"service_resources.resources.{svc}.peak_rss_mb",
            "<",
            150,
            "MB",
        )
        for svc in SERVICES
    ],
    Target(
        "slow mail, async: POST p50 within 20 % of normal",
        "slow_mail.latency_ms.async_post.p50",
        "<=",
        1.2,
        "x",
        relative_to="slow_mail.latency_ms.async_post_normal.p50",
    ),
    Target(
        "slow mail, sync: POST p50 ≥ 200 ms", "slow_mail.latency_ms.sync_post.p50", ">=", 200, "ms"
    ),
]


async def _run_scenario(fn: Scenario, ctx: BenchContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(ctx)
    return await asyncio.to_thread(fn, ctx)  # e.g. the ceiling, which runs its own loops


async def _run_all(
    names: list[str], ctx: BenchContext, results: dict[str, Any], errors: dict[str, str]
) -> None:
    """Run the scenarios in order; one stack serves the consecutive ones that need it."""
    async with contextlib.AsyncExitStack() as exits:
        stack_exits: contextlib.AsyncExitStack | None = None
        for name in names:
            fn, needs_stack = SCENARIOS[name]
            if needs_stack and ctx.stack is None:
                print("starting the service stack …", file=sys.stderr, flush=True)
                stack_exits = await exits.enter_async_context(contextlib.AsyncExitStack())
                try:
                    ctx.stack = await stack_exits.enter_async_context(
                        pipeline.pipeline_stack(
                            ctx.broker, ctx.options["db"],
                            services_python=ctx.options.get("services_python"),
                            services_cwd=ctx.options.get("services_cwd"),
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - reported like a failed scenario
                    traceback.print_exc()
                    errors[name] = f"stack did not start: {type(exc).__name__}: {exc}"
                    continue
                ctx.vhost = ctx.stack.vhost
                ctx.base_urls = {s: ctx.stack.url(s) for s in SERVICES}
                ctx.pids = ctx.stack.pids
            elif not needs_stack and stack_exits is not None:
                # the next scenarios measure something else: don't let the stack compete
                await stack_exits.aclose()
                stack_exits, ctx.stack = None, None
            print(f"running {name} …", file=sys.stderr, flush=True)
            t = time.monotonic()
            try:
                results[name] = await _run_scenario(fn, ctx)
            except Exception as exc:  # noqa: BLE001 - report it and go on with the others
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            results[name]["wall_s"] = round(time.monotonic() - t, 2)


def postprocess(results: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """Summarise latency samples in place; return (plot latencies, plot throughput, rates)."""
    plot_lat: dict[str, list[float]] = {}
    plot_tp: dict[str, list[list[float]]] = {}
    for name, res in results.items():
        samples = res.pop("latency_samples_ms", None) or {}
        if samples:
            res["latency_ms"] = {label: summarize(v) for label, v in samples.items()}
            res["latency_samples_ms"] = {
                label: downsample_sorted(v, 2000) for label, v in samples.items()
            }
            for label, v in samples.items():
                plot_lat[f"{name}: {label}"] = list(v)
        if res.get("timeseries"):
            plot_tp[name] = res["timeseries"]
    return plot_lat, plot_tp, {}


def build_table(results: dict[str, dict[str, Any]], targets: list[Target]) -> tuple[str, list]:
    ceiling_rate = (results.get("ceiling") or {}).get("rate")
    rates = [(name, res.get("rate")) for name, res in results.items() if "rate" in res]
    resources = [
        (f"{name}: {proc}", stats.get("cpu_s"), stats.get("peak_rss_mb"))
        for name, res in results.items()
        for proc, stats in (res.get("resources") or {}).items()
    ]
    latencies = [
        (f"{name}: {label}", summary)
        for name, res in results.items()
        for label, summary in (res.get("latency_ms") or {}).items()
    ]
    evaluated = evaluate_targets(targets, results)
    table = format_table(rates, ceiling_rate, resources, evaluated, latencies)
    return table, evaluated


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per timed scenario (ceiling default 20)",
    )
    p.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="database for the services (pipeline scenarios)",
    )
    p.add_argument(
        "--ceiling-window",
        type=int,
        default=None,
        help="ceiling: publishes awaiting their confirm at once",
    )
    p.add_argument(
        "--ceiling-prefetch", type=int, default=None, help="ceiling: prefetch per consumer"
    )
    p.add_argument(
        "--clients", type=int, default=32, help="saturation: concurrent closed-loop clients"
    )
    p.add_argument("--rate", type=float, default=200.0, help="fixed_rate: payments per second")
    p.add_argument(
        "--smtp-delay", type=float, default=0.2, help="slow_mail: SMTP hold per mail (s)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="saturation: py-spy on every service over the steady window; a flame graph "
        "(.svg) and top functions (.txt) per service next to the results JSON",
    )
    p.add_argument(
        "--profile-rate",
        type=_positive_int,
        default=profiling.DEFAULT_RATE,
        help=f"--profile: samples per second (default {profiling.DEFAULT_RATE})",
    )
    p.add_argument(
        "--services-python",
        default=sys.executable,
        help="the interpreter that runs the services, e.g. another tree's .venv/bin/python "
        "for a same-run before/after (default: this one); the SMTP sink and the load "
        "client stay on this one",
    )
    p.add_argument(
        "--label",
        type=_label,
        default=None,
        help="a name for this run (e.g. before, after): in the results file names and JSON",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--amqp-port", type=int, default=5672)
    p.add_argument("--mgmt-url", default="http://127.0.0.1:15672")
    return p.parse_args(argv)


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _label(value: str) -> str:
    """A label goes into file names: letters, digits, '.', '_', '-'; no path, no spaces."""
    if not _LABEL.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a label is 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number > 0")
    return number


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _shown(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    args.services_python = interpreter.absolute_python(args.services_python)
    try:  # the entry points the stack runs: `python -m <service>`, `-m inprocess`
        services = interpreter.describe(args.services_python, [*pipeline.SERVICES, "inprocess"])
    except interpreter.InterpreterError as exc:
        print(f"--services-python: {exc}", file=sys.stderr)
        return 2
    services["same_as_bench"] = args.services_python == sys.executable
    broker = Broker(amqp_port=args.amqp_port, mgmt_url=args.mgmt_url)
    version = broker.version()
    if version is None:
        print(f"RabbitMQ management API not reachable at {broker.mgmt_url}", file=sys.stderr)
        return 2
    started = time.time()
    stem = results_stem(started, args.label)
    profiler = None
    if args.profile:
        py_spy = profiling.find_py_spy()
        if py_spy is None:
            print("profile: py-spy not found (uv sync installs it with the bench group); "
                  "running without profiles", file=sys.stderr)
        elif "saturation" not in names:
            print("profile: --profile samples the saturation scenario, which is not in --only; "
                  "no profiles", file=sys.stderr)
        else:
            profiler = profiling.ServiceProfiler(py_spy, args.results_dir, stem,
                                                 args.profile_rate)
    ctx = BenchContext(
        broker=broker,
        duration=args.duration or 30.0,
        ceiling_duration=args.duration or 20.0,
        progress=not args.no_progress,
        options={
            "db": args.db,
            "ceiling_window": args.ceiling_window,
            "ceiling_prefetch": args.ceiling_prefetch,
            "clients": args.clients,
            "rate": args.rate,
            "smtp_delay": args.smtp_delay,
            "profiler": profiler,
            "services_python": args.services_python,
            # the services run in their own tree (as `make run` there); else in this one
            "services_cwd": Path(services["tree"]) if services["tree"] else None,
        },
    )
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    # SIGTERM (timeout, CI) unwinds like Ctrl-C: the stack, vhost and databases are removed
    signal.signal(signal.SIGTERM, _interrupt)
    asyncio.run(_run_all(names, ctx, results, errors))

    plot_lat, plot_tp, _ = postprocess(results)
    table, evaluated = build_table(results, TARGETS)
    report = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        # the load average at the end too: a run disturbed by other work shows in both
        "machine": machine_info() | {"loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "rabbitmq": version,
        "label": args.label,
        "commit": git_commit(REPO),  # the bench's; the services' is under "services"
        "services": services,
        "args": {k: str(v) for k, v in vars(args).items()},
        "scenarios": results,
        "errors": errors,
        "targets": [t.__dict__ | {"met": t.met} for t in evaluated],
        "table": table,
    }
    json_path = write_results(report, stem, args.results_dir)
    png_path = None
    if not args.no_plot and (plot_lat or plot_tp):
        png_path = plot_results(
            plot_lat,
            plot_tp,
            args.results_dir / f"{stem}.png",
            title=f"Mini EC benchmark {report['started_at']} "
            f"({report['machine']['cpus']} CPUs, RabbitMQ {version})",
        )
    print()
    print(table)
    print()
    for name, res in results.items():
        m = res.get("machine_cpu") or {}
        if m.get("capacity_cpu_s") and m.get("other_cpu_s", 0) > 0.1 * m["capacity_cpu_s"]:
            print(
                f"warning: during {name}, other processes used {m['other_cpu_s']:.1f} of "
                f"{m['capacity_cpu_s']:.1f} CPU seconds; its figures are skewed by that load"
            )
    busy = (results.get("saturation") or {}).get("machine_busy_share")
    if busy is not None:
        print(f"saturation: the machine was {busy:.0%} busy (all {os.cpu_count()} cores) "
              "over the steady window")
    profile = (results.get("saturation") or {}).get("profile")
    if profile is not None:
        line = profiling.failure_line(profile["failed"], [*profile["services"],
                                                          *profile["failed"]])
        if line:
            print(line)
        for svc, p in profile["services"].items():
            print(f"profile: {svc}: {p['samples']} samples (py-spy {p['py_spy_cpu_s']} CPU s) → "
                  f"{_shown(args.results_dir / p['flamegraph'])}, {p['summary']}")
    for name, err in errors.items():
        print(f"scenario {name} FAILED: {err}")
    print(f"results: {_shown(json_path)}")
    if png_path is not None:
        print(f"plot:    {_shown(png_path)}")
    return 1 if errors else 0
