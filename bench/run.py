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

from bench import ceiling, floor, interpreter, pairs, pipeline, profiling, quiet
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
    renice,
    results_stem,
    summarize,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
SERVICES = pipeline.SERVICES  # the five, from the specs


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
    earlier: dict[str, Any] = field(default_factory=dict)  # this run's results so far

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
    # far from saturation (issue 29): not in the default run, ask for them with --only
    "idle": (quiet.idle, True),
    "fixed_rates": (quiet.fixed_rates, True),
    # a bare consumer for one message at a time, and what each layer of the services adds
    "floor": (floor.scenario, False),
}
DEFAULT_SCENARIOS = ("ceiling", "saturation", "fixed_rate", "service_resources", "slow_mail")
_OPT_IN = [n for n in SCENARIOS if n not in DEFAULT_SCENARIOS]

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
    ctx.earlier = results
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
                if ctx.options.get("nice") is not None:
                    _renice_stack(ctx)
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


def _renice_stack(ctx: BenchContext) -> None:
    """``--nice``: the services, the SMTP sink and the bench itself (the broker is shared:
    left alone)."""
    st = ctx.stack
    pids = [*st.pids.values(), st.smtp.process.pid, os.getpid()]
    failed = renice(pids, ctx.options["nice"])
    if failed:
        print(f"--nice: could not set the niceness of pids {failed}", file=sys.stderr)


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
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated scenarios, run in this order (default: "
        f"{', '.join(DEFAULT_SCENARIOS)}; also: {', '.join(_OPT_IN)})",
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
    p.add_argument(
        "--floor-rate", type=_positive_rate, default=floor.DEFAULT_RATE,
        help="floor: messages per second to each variant's consumer",
    )
    p.add_argument(
        "--max-backlog", type=_positive_int, default=pipeline.MAX_BACKLOG,
        help="saturation: the clients pause while more payments than this are posted but not "
        f"yet processed (default {pipeline.MAX_BACKLOG}: the rate the stack sustains)",
    )
    p.add_argument("--rate", type=float, default=200.0, help="fixed_rate: payments per second")
    p.add_argument(
        "--rates", type=_rates, default="10,20,40",
        help="fixed_rates: payments/s, one after the other, e.g. 10,20,0.5x (0.5x: half the "
        "saturation: the saturation scenario's rate earlier in this run, or --saturation-rate)",
    )
    p.add_argument(
        "--saturation-rate", type=float, default=None,
        help="fixed_rates: the saturation rate the 0.5x-style rates are fractions of",
    )
    p.add_argument(
        "--idle-seconds", type=float, default=20.0, help="idle: the measurement window (s)"
    )
    p.add_argument(
        "--idle-settle", type=float, default=5.0,
        help="idle: seconds to wait after the last payment is processed before measuring",
    )
    p.add_argument(
        "--nice", type=int, default=None,
        help="scheduling niceness of the stack's services, SMTP sink and the bench (-20..19; "
        "below 0 needs root): on a machine shared with other work, e.g. -5 gives the stack a "
        "core when it needs one, as on a quiet machine; the broker is left alone",
    )
    p.add_argument(
        "--baseline-tree", type=Path, default=None,
        help="same-run pairs: run the scenarios alternately against the services of this tree "
        "(its .venv; `make install` there) and of --services-python, baseline first, "
        "--pairs times, and report each figure's ratio current/baseline",
    )
    p.add_argument(
        "--pairs", type=_positive_int, default=2, help="--baseline-tree: how many pairs"
    )
    p.add_argument(
        "--smtp-delay", type=float, default=0.2, help="slow_mail: SMTP hold per mail (s)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="saturation and fixed_rates: py-spy on every service over the steady window (each "
        "rate's, with fixed_rates; the SMTP sink too); a flame graph (.svg), top functions and "
        "shares by kind of work (.txt) per service next to the results JSON",
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


def _rates(value: str) -> str:
    try:
        quiet.parse_rates(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _positive_rate(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: messages per second, a number > 0")
    return number


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


def _describe(python: str, what: str) -> dict[str, Any] | None:
    try:  # the entry points the stack runs: `python -m <service>`, `-m inprocess`
        return interpreter.describe(python, [*pipeline.SERVICES, "inprocess"])
    except interpreter.InterpreterError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return None


def _run_side(names: list[str], ctx: BenchContext, python: str, services: dict[str, Any],
              profiler: profiling.ServiceProfiler | None) -> tuple[dict, dict]:
    """The scenarios once, against the services ``python`` runs (in their own tree)."""
    ctx.stack = None
    ctx.options |= {
        "services_python": python,
        # the services run in their own tree (as `make run` there); else in this one
        "services_cwd": Path(services["tree"]) if services["tree"] else None,
        "profiler": profiler,
    }
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    asyncio.run(_run_all(names, ctx, results, errors))
    return results, errors


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
    services = _describe(args.services_python, "--services-python")
    if services is None:
        return 2
    services["same_as_bench"] = args.services_python == sys.executable
    if "floor" in names and (args.baseline_tree is not None or not services["same_as_bench"]):
        print("floor measures this tree's library in the bench's interpreter: run it without "
              "--baseline-tree and --services-python", file=sys.stderr)
        return 2
    baseline: dict[str, Any] | None = None
    if args.baseline_tree is not None:
        base_python = str(args.baseline_tree.absolute() / ".venv" / "bin" / "python")
        baseline = _describe(base_python, "--baseline-tree")
        if baseline is None:
            return 2
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
        elif not {"saturation", "fixed_rates"} & set(names):
            print("profile: --profile samples the saturation and fixed_rates scenarios, neither "
                  "is in --only; no profiles", file=sys.stderr)
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
            "max_backlog": args.max_backlog,
            "floor_rate": args.floor_rate,
            "rate": args.rate,
            "rates": args.rates,
            "saturation_rate": args.saturation_rate,
            "idle_seconds": args.idle_seconds,
            "idle_settle": args.idle_settle,
            "smtp_delay": args.smtp_delay,
            "nice": args.nice,
        },
    )
    # SIGTERM (timeout, CI) unwinds like Ctrl-C: the stack, vhost and databases are removed
    signal.signal(signal.SIGTERM, _interrupt)
    report: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        # the load average at the end too: a run disturbed by other work shows in both
        "machine": machine_info(),
        "rabbitmq": version,
        "label": args.label,
        "commit": git_commit(REPO),  # the bench's; the services' is under "services"
        "services": services,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if baseline is not None:
        return _main_pairs(args, names, ctx, report, baseline, profiler, stem)
    results, errors = _run_side(names, ctx, args.services_python, services, profiler)
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    plot_lat, plot_tp, _ = postprocess(results)
    table, evaluated = build_table(results, TARGETS)
    report |= {
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
    _print_quiet(results)
    _print_profiles(results, args.results_dir)
    for name, err in errors.items():
        print(f"scenario {name} FAILED: {err}")
    print(f"results: {_shown(json_path)}")
    if png_path is not None:
        print(f"plot:    {_shown(png_path)}")
    return 1 if errors else 0


def _print_quiet(results: dict[str, dict[str, Any]], heading: str = "") -> None:
    if "fixed_rates" in results:
        print(f"\n{heading}fixed rates (CPU ms per payment, window: first send to last commit)")
        print(quiet.format_rates(results["fixed_rates"]))
    if "idle" in results:
        print(f"\n{heading}idle (% of one core over {results['idle']['seconds']} s)")
        print(quiet.format_idle(results["idle"]))
    if "floor" in results:
        print(f"\n{heading}floor (one message at a time, {results['floor']['offered_rate']:g}/s)")
        print(floor.format_floor(results["floor"]))


def _print_profiles(results: dict[str, dict[str, Any]], directory: Path) -> None:
    found = []
    if "profile" in (results.get("saturation") or {}):
        found.append(("saturation", results["saturation"]["profile"]))
    for label, r in ((results.get("fixed_rates") or {}).get("rates") or {}).items():
        if "profile" in r:
            found.append((f"fixed rate {label}/s", r["profile"]))
    for where, profile in found:
        line = profiling.failure_line(profile["failed"], [*profile["services"],
                                                          *profile["failed"]])
        if line:
            print(f"{where}: {line}")
        for svc, p in profile["services"].items():
            print(f"profile ({where}): {svc}: {p['samples']} samples (py-spy "
                  f"{p['py_spy_cpu_s']} CPU s) → {_shown(directory / p['flamegraph'])}, "
                  f"{p['summary']}")


def _main_pairs(args: argparse.Namespace, names: list[str], ctx: BenchContext,
                report: dict[str, Any], baseline: dict[str, Any],
                profiler: profiling.ServiceProfiler | None, stem: str) -> int:
    """``--baseline-tree``: baseline, current, baseline, current, … then the ratios."""
    sides = {"baseline": (baseline["python"], baseline),
             "current": (args.services_python, report["services"])}
    rounds: list[dict[str, Any]] = []
    failed = False
    for i in range(1, args.pairs + 1):
        pair: dict[str, Any] = {}
        for side, (python, services) in sides.items():
            print(f"pair {i}/{args.pairs}: {side} ({services['tree']}, "
                  f"{services.get('commit')}) …", file=sys.stderr, flush=True)
            tagged = profiler.tagged(f"{side}{i}") if profiler is not None else None
            results, errors = _run_side(names, ctx, python, services, tagged)
            postprocess(results)
            for res in results.values():  # the ratios and the figures, not every sample
                res.pop("latency_samples_ms", None)
            pair[side] = {"scenarios": results, "errors": errors,
                          "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
            failed = failed or bool(errors)
            _print_quiet(results, f"pair {i}, {side}: ")
            for name, err in errors.items():
                print(f"pair {i}, {side}: scenario {name} FAILED: {err}")
        rounds.append(pair)
    comparison = pairs.compare([(p["baseline"]["scenarios"], p["current"]["scenarios"])
                                for p in rounds])
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report |= {"baseline": baseline, "pairs": rounds, "comparison": comparison}
    json_path = write_results(report, stem, args.results_dir)
    print()
    print(pairs.format_comparison(comparison))
    print(f"results: {_shown(json_path)}")
    return 1 if failed else 0
