"""The overview's alerts against a real Prometheus (Debian's `prometheus` binary, found or
unpacked by tools/promtool.sh) whose rule fires at once; then the same Prometheus stopped."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from devstack import throwaway
from devstack.console import ConsoleProcess
from devstack.stack import free_port
from devstack.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[3]
RULES = """
groups:
  - name: console-test
    rules:
      - alert: ConsoleTestAlwaysFiring
        expr: vector(1)
        labels: {severity: warning, service: mailer}
        annotations: {summary: "fires at once, for the console's overview"}
"""


def prometheus_binary() -> str:
    found = subprocess.run([ROOT / "tools" / "promtool.sh", "prometheus"], capture_output=True,
                           text=True, timeout=300)
    if found.returncode != 0:
        pytest.skip(f"no prometheus binary: {found.stderr.strip()}")
    return found.stdout.strip()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "rules.yml").write_text(RULES)
    (tmp / "prometheus.yml").write_text(
        "global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n")
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [prometheus_binary(), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


@pytest.fixture(scope="module")
def console(prometheus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-alerts")
    with throwaway.throwaway_vhost("console-alerts") as (_vhost, url):
        process = ConsoleProcess(rabbitmq_url=url, port=free_port(),
                                 database_url=f"sqlite+aiosqlite:///{tmp}/c.db",
                                 log_path=tmp / "console.log",
                                 extra_env={"PROMETHEUS_URL": prometheus[1]})
        try:
            process.start()
            process.wait_ready(timeout=120)
            yield process
        finally:
            process.stop()


def test_the_overview_shows_the_alerts_firing_then_prometheus_not_reachable(prometheus,
                                                                            console):
    def firing():
        answer = httpx.get(f"{console.url}/api/alerts", auth=console.auth, timeout=10).json()
        return answer if answer["firing"] else None

    answer = eventually(firing, timeout=60, interval=0.5, message="the rule's alert firing")
    assert answer["connected"] and answer["problem"] is None
    [alert] = answer["firing"]
    assert (alert["name"], alert["severity"], alert["service"]) == (
        "ConsoleTestAlwaysFiring", "warning", "mailer")
    assert alert["since"] is not None
    page = httpx.get(console.url, auth=console.auth, timeout=10)
    assert page.status_code == 200
    assert "ConsoleTestAlwaysFiring" in page.text and "not reachable" not in page.text

    # Prometheus gone: the overview still answers, and says so.
    process = prometheus[0]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    page = httpx.get(console.url, auth=console.auth, timeout=10)
    assert page.status_code == 200
    assert "Prometheus is not reachable" in page.text
    assert "ConsoleTestAlwaysFiring" not in page.text
    answer = httpx.get(f"{console.url}/api/alerts", auth=console.auth, timeout=10).json()
    assert answer["connected"] and answer["problem"] and answer["firing"] == []


def test_the_alerts_need_the_consoles_credentials(console):
    for auth in (None, (console.user, "wrong password")):
        assert httpx.get(f"{console.url}/api/alerts", auth=auth, timeout=10).status_code == 401
