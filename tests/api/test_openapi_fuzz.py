"""Schemathesis against every service's OpenAPI document: `--checks all`, stateful, bounded.

Each service is a real process (the module's stack: one vhost, SQLite files, an SMTP sink).
Every check schemathesis has must pass: no 5xx, only documented status codes, content types
and headers, responses that match their schemas, schema-valid requests accepted and
schema-invalid ones refused. Bounded in examples and time (about a minute for the five);
the seed is printed, so a failure can be replayed with `--seed`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from messaging import spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Seconds of generation per service: payment has the writes and the stateful links; the
# others serve reads.
WRITER_BUDGET, READER_BUDGET = 25, 12


@pytest.mark.parametrize("service", spec.names())
def test_schemathesis_finds_no_failure(stack, service, tmp_path):
    budget = WRITER_BUDGET if spec.named(service).consumes is None else READER_BUDGET
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{stack.url(service)}/openapi.json",
         "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
         "--max-examples", "25", "--max-time", str(budget),
         "--request-timeout", "10", "--no-color", "--workers", "1"],
        capture_output=True, text=True, timeout=100, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks",
             "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])},
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout, report  # test cases ran (not an empty suite)
