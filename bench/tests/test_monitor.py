"""ProcessMonitor: a process measured without the children it reaped (the bench itself, whose
children include the --profile samplers)."""

import os
import subprocess
import sys

import pytest

from bench.harness import ProcessMonitor

pytestmark = pytest.mark.integration

BURN = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"


def test_children_false_leaves_out_a_reaped_childs_cpu():
    monitor = ProcessMonitor()
    monitor.add("with children", os.getpid(), since_now=True)
    monitor.add("without children", os.getpid(), since_now=True, children=False)
    subprocess.run([sys.executable, "-c", BURN], check=True)  # reaped: its CPU is ours now
    monitor.sample()
    with_children = monitor.stats["with children"].cpu_s
    without = monitor.stats["without children"].cpu_s
    assert with_children - without >= 0.45  # the child's 0.5 s, less clock granularity
    assert without < 0.45


def test_busy_share_counts_the_whole_machine_over_a_window():
    monitor = ProcessMonitor()
    mark = monitor.busy_mark()
    subprocess.run([sys.executable, "-c", BURN], check=True)  # one core busy for 0.5 s
    share = monitor.busy_share_since(mark)
    # At least the burn's core over the window (which is a little longer than the burn).
    assert 0.5 / (os.cpu_count() or 1) <= share <= 1.0
