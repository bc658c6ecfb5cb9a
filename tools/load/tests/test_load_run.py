"""`python -m load` (what `make load` runs) against the native stack for a few seconds: no
request fails, every accepted payment's effects are there, the summary says so; and the
effects check names what is missing when something is."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import pytest

from devstack.stack import free_port
from load.checker import Urls, verify
from load.effects import Payment

pytestmark = pytest.mark.e2e


def _urls(stack) -> Urls:
    return Urls(**{service: stack.url(service) for service in
                   ("payment", "points", "mailer", "audit", "shipping")})


def test_a_short_run_has_no_failures_and_every_accepted_payment_has_its_effects(stack):
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    urls = _urls(stack)
    result = subprocess.run(
        [sys.executable, "-m", "load", "--users", "3", "--rate", "4", "--duration", "5s",
         "--host", urls.payment, "--points-url", urls.points, "--mailer-url", urls.mailer,
         "--audit-url", urls.audit, "--shipping-url", urls.shipping,
         "--refunds", "0.3", "--run-id", run_id, "--settle-seconds", "60"],
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = result.stdout[result.stdout.index(f"load run {run_id}"):]
    print(summary)
    assert re.search(r"requests   \d+ \([\d.]+/s\), failures 0, retried 0", summary), summary
    assert re.search(r"latency ms p50 \d+  p95 \d+  p99 \d+  max \d+", summary), summary
    accepted, refunded = map(int, re.search(
        r"payments   (\d+) accepted, (\d+) refunded", summary).groups())
    # About 4/s for 5 s asked; a busy machine answers slower and the shoppers pace on that.
    assert accepted >= 3, summary
    assert f"effects    all present, once, for all {accepted} payments" in summary

    # The services' own record agrees: payment answered 201 to exactly that many requests of
    # this run, each under a correlation id naming the run.
    lines = [json.loads(line) for line in
             (stack.services["payment"].log_path).read_text().splitlines() if line.strip()]
    paid = {line["correlation_id"] for line in lines
            if line["message"].startswith("POST /payments -> 201")
            and (line["correlation_id"] or "").startswith(f"{run_id}-")}
    refunds = [line for line in lines if re.match(r"POST /payments/\S+/refund -> 200",
                                                  line["message"])
               and (line["correlation_id"] or "").startswith(f"{run_id}-")]
    assert (len(paid), len(refunds)) == (accepted, refunded)


def test_a_service_that_does_not_answer_fails_the_run_and_the_summary_says_why(stack):
    urls = _urls(stack)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "load", "--users", "1", "--rate", "2", "--duration", "2s",
         "--host", urls.payment, "--points-url", urls.points, "--mailer-url", urls.mailer,
         "--audit-url", urls.audit, "--shipping-url", nobody, "--attempts", "1",
         "--settle-seconds", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("load run load-"):]
    failures = int(re.search(r"failures (\d+)", summary).group(1))
    assert failures >= 1, summary  # every read of the shipments
    assert "effects    not checked: could not read the effects: ConnectionError" in summary


def test_the_check_names_the_effects_of_a_payment_the_services_never_saw(stack):
    never = Payment(order_id=str(uuid.uuid4()), customer_id="nobody", amount=1200,
                    correlation_id="load-test-1")
    wrong = verify([never], _urls(stack), settle_seconds=0.5, poll_seconds=0.1)
    assert wrong == {never.order_id: [
        "missing points ('order paid', 12)", "missing mails Thank you for your order",
        "missing mails Your order has shipped", "missing audit OrderPaid",
        "missing audit OrderShipped", "missing shipments shipped"]}
