"""--profile: collapsed-stack aggregation, the flame graph, and py-spy driven for real."""

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from bench.profiling import (
    ServiceProfiler,
    failure_line,
    find_py_spy,
    flamegraph_svg,
    format_summary,
    function_of,
    function_shares,
    parse_collapsed,
    top_by_own,
    top_by_total,
)

RAW = """\
<module> (payment/__main__.py:5);run (asyncio/runners.py:118);handle (messaging/inbox.py:120) 6
<module> (payment/__main__.py:5);run (asyncio/runners.py:118);handle (messaging/inbox.py:131) 2
<module> (payment/__main__.py:5);run (asyncio/runners.py:118);dumps (json/__init__.py:231) 2
"""


# ---- parsing and aggregation ----------------------------------------------------------------


@pytest.mark.unit
def test_parse_collapsed_sums_repeated_stacks_and_skips_broken_lines():
    text = RAW + RAW.splitlines()[0] + "\n" + "half a line without count\n\n"
    stacks = parse_collapsed(text)
    assert len(stacks) == 3
    first = tuple(RAW.splitlines()[0].rsplit(" ", 1)[0].split(";"))
    assert stacks[first] == 12
    assert sum(stacks.values()) == 16  # 10, and the first line again


@pytest.mark.unit
def test_frames_with_spaces_keep_their_name():
    stacks = parse_collapsed("<module> (x.py:1);Handle._run (asyncio/events.py:80) 3\n")
    assert stacks == {("<module> (x.py:1)", "Handle._run (asyncio/events.py:80)"): 3}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("frame", "function"),
    [
        ("handle (messaging/inbox.py:120)", "handle (messaging/inbox.py)"),
        ("handle (messaging/inbox.py)", "handle (messaging/inbox.py)"),  # --nolineno
        ("<lambda> (<string>:3)", "<lambda> (<string>)"),
        ("_call_with_frames_removed (<frozen importlib._bootstrap>:241)",
         "_call_with_frames_removed (<frozen importlib._bootstrap>)"),
        ("no file at all", "no file at all"),
    ],
)
def test_function_of_drops_the_line_number(frame, function):
    assert function_of(frame) == function


@pytest.mark.unit
def test_function_shares_count_own_and_total_per_function():
    rows = {r.function: r for r in function_shares(parse_collapsed(RAW))}
    handle = rows["handle (messaging/inbox.py)"]  # two lines, one function
    assert (handle.own_samples, handle.total_samples) == (8, 8)
    assert handle.own_share == pytest.approx(0.8)
    run = rows["run (asyncio/runners.py)"]
    assert (run.own_samples, run.total_samples, run.total_share) == (0, 10, 1.0)
    assert [r.function for r in top_by_own(rows.values(), 2)] == [
        "handle (messaging/inbox.py)", "dumps (json/__init__.py)"]


@pytest.mark.unit
def test_recursion_counts_once_per_sample_in_the_total():
    rows = {r.function: r for r in function_shares(
        parse_collapsed("main (a.py:1);walk (a.py:5);walk (a.py:5);walk (a.py:6) 4\n"
                        "main (a.py:1);other (a.py:9) 4\n"))}
    assert rows["walk (a.py)"].total_samples == 4
    assert rows["walk (a.py)"].total_share == pytest.approx(0.5)
    assert rows["walk (a.py)"].own_samples == 4


@pytest.mark.unit
def test_top_by_total_leaves_out_the_frames_on_every_sample():
    rows = function_shares(parse_collapsed(RAW))
    names = [r.function for r in top_by_total(rows)]
    assert names == ["handle (messaging/inbox.py)", "dumps (json/__init__.py)"]


@pytest.mark.unit
def test_summary_lists_both_tables():
    text = format_summary("payment", parse_collapsed(RAW), rate=100, seconds=2.0, n=15)
    assert text.startswith("payment: 10 samples on CPU in 2.0 s at 100 Hz (busy 5 %")
    own, total = text.split("top 15 by total share")
    assert "  80.00    80.00  handle (messaging/inbox.py)" in own
    assert "run (asyncio/runners.py)" not in total  # 100 %: left out
    assert "  20.00    20.00  dumps (json/__init__.py)" in total


# ---- flame graph --------------------------------------------------------------------------------


def _widths(svg: str) -> dict[str, float]:
    """frame name → width, from each frame's tooltip ``name (N samples, P %)``."""
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)  # well-formed XML, escaping included
    return {
        g.find("s:title", ns).text.rsplit(" (", 1)[0]: float(g.find("s:rect", ns).get("width"))
        for g in root.iter(f"{{{ns['s']}}}g")
    }


@pytest.mark.unit
def test_flamegraph_widths_follow_the_samples():
    svg = flamegraph_svg(parse_collapsed(RAW), "payment <test> & co", width=1020)
    widths = _widths(svg)
    assert widths["all"] == pytest.approx(1000)  # the width minus the 10 px margins
    assert widths["<module> (payment/__main__.py)"] == pytest.approx(1000)
    # its two lines merged into one frame: 8 of 10 samples
    assert widths["handle (messaging/inbox.py)"] == pytest.approx(800)
    assert widths["dumps (json/__init__.py)"] == pytest.approx(200)
    assert "payment &lt;test&gt; &amp; co" in svg
    assert "8 samples, 80.00 %" in svg


@pytest.mark.unit
def test_flamegraph_of_no_samples_says_so():
    svg = flamegraph_svg({}, "idle")
    ET.fromstring(svg)
    assert "no samples" in svg


@pytest.mark.unit
def test_failure_line_names_who_failed():
    assert failure_line({}, ["payment"]) is None
    every = failure_line({"payment": "py-spy exited with 1: Error: x",
                          "points": "py-spy exited with 1: Error: x"}, ["payment", "points"])
    assert every == ("profile: py-spy failed for every service (py-spy exited with 1: Error: x); "
                     "continuing without profiles")
    some = failure_line({"points": "boom"}, ["payment", "points"])
    assert some == "profile: py-spy failed for points (boom); no profile for those"


# ---- py-spy itself --------------------------------------------------------------------------


BUSY = """
import sys
def spin():
    total = 0
    for i in range(200_000):
        total += i * i
    return total
print("ready", flush=True)
while True:
    spin()
"""


@pytest.fixture
def busy_process():
    proc = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_profiler_writes_flamegraph_and_summary(tmp_path, busy_process):
    py_spy = find_py_spy()
    if py_spy is None:
        pytest.skip("py-spy not installed (bench dependency group)")
    if os.geteuid() != 0:
        pytest.skip("py-spy needs root (ptrace) here; not run")
    profiler = ServiceProfiler(py_spy, tmp_path, "20260101T000000Z-t", rate=100)
    profiler.start({"busy": busy_process.pid})
    time.sleep(1.5)  # the sampling window, not synchronisation
    profiler.interrupt()
    result = profiler.collect(timeout=30)
    assert result["failed"] == {}
    busy = result["services"]["busy"]
    assert busy["flamegraph"] == "20260101T000000Z-t-busy.svg"
    assert busy["summary"] == "20260101T000000Z-t-busy.txt"
    assert busy["collapsed"] == "20260101T000000Z-t-busy.folded"
    assert busy["samples"] > 50
    assert 0 < busy["py_spy_cpu_s"] < 5  # the sampler's own, measured when it was reaped
    assert busy["top_own"][0]["function"] == "spin (<string>)"
    ET.fromstring((tmp_path / busy["flamegraph"]).read_text())
    assert "spin (<string>)" in (tmp_path / busy["summary"]).read_text()


def _stand_in(tmp_path, body: str) -> str:
    """An executable in py-spy's place (the samplers are real processes, not mocks)."""
    path = tmp_path / "py-spy"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.integration
def test_profiler_reports_a_sampler_that_fails(tmp_path, busy_process):
    # a py-spy that cannot attach: says why, exits 1, writes no file
    py_spy = _stand_in(tmp_path, "echo 'Error: Failed to find python version' >&2\nexit 1\n")
    out = tmp_path / "results"
    profiler = ServiceProfiler(py_spy, out, "stem", rate=100)
    profiler.start({"busy": busy_process.pid})
    result = profiler.collect(timeout=10)
    assert result["services"] == {}
    # the reason, unless the end-of-window SIGINT reached it before its exit
    assert result["failed"]["busy"] in (
        "py-spy exited with 1: Error: Failed to find python version",
        "py-spy exited with -2: no output",
    )
    assert list(out.iterdir()) == []


@pytest.mark.integration
def test_abandon_stops_the_samplers(tmp_path, busy_process):
    # a py-spy that samples until stopped
    pid_file = tmp_path / "sampler.pid"
    py_spy = _stand_in(tmp_path, f"echo $$ > {pid_file}\nexec sleep 60\n")
    profiler = ServiceProfiler(py_spy, tmp_path / "results", "stem")
    profiler.start({"busy": busy_process.pid})
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "stand-in sampler did not start"
        time.sleep(0.02)
    pid = int(pid_file.read_text())
    profiler.abandon()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
