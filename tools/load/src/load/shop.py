"""The Locust scenario: shoppers who pay, look at what their order caused, and sometimes ask
for their money back (docs/load.md). Run it with `python -m load` (`make load`), or in the
compose profile `load` with Locust's web UI.

One visit of a shopper: pay (an `Idempotency-Key`; a 503 or a lost connection is retried with
the same key and body), read the points, the mails, the audit trail and the shipment of the
order, and for a share of orders refund it. Every request of a visit carries the correlation id
`<run id>-<visit number>`. When the run stops, every accepted payment's effects are checked
(checker.py), and the summary is printed (report.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
import uuid
from dataclasses import dataclass, field

import gevent
from locust import HttpUser, constant_pacing, events, task
from locust.env import Environment

from load import checker, options, report, retry
from load.effects import Payment

log = logging.getLogger("load")

PAY = "/payments"
REFUND = "/payments/[id]/refund"


@dataclass
class Run:
    """What one run (start to stop) accepted; a new run in the web UI starts afresh."""

    id: str
    payments: dict[str, Payment] = field(default_factory=dict)
    refunds: int = 0
    retried: int = 0
    visits: itertools.count = field(default_factory=lambda: itertools.count(1))
    shoppers: itertools.count = field(default_factory=lambda: itertools.count(1))
    check: gevent.Greenlet | None = None
    wrong: dict[str, list[str]] | None = None  # None: not checked
    check_error: str | None = None
    summary: str = ""


run = Run(id="")


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    group = parser.add_argument_group("Mini EC shop")
    group.add_argument("--rate", type=options.positive_float, default=5.0,
                       help="shop visits (payments) per second, all users together (5)")
    group.add_argument("--refunds", type=options.share, default=0.1,
                       help="share of orders refunded right after the visit (0.1)")
    group.add_argument("--run-id", type=options.run_id, default=None,
                       help="names the run in correlation and customer ids (load-<time>-<hex>)")
    group.add_argument("--attempts", type=options.positive_int, default=5,
                       help="tries of one request on 503, 502, 504 or no answer (5)")
    group.add_argument("--settle-seconds", type=options.positive_float, default=60.0,
                       help="after the run, how long the effects may take to appear (60)")
    for service, (variable, default) in options.SERVICE_URLS.items():
        group.add_argument(f"--{service}-url", default=default, env_var=variable,
                           help=f"{service}'s base URL (payment's is --host)")


def _urls(environment: Environment) -> checker.Urls:
    o = environment.parsed_options
    return checker.Urls(payment=(environment.host or "").rstrip("/"),
                        points=o.points_url.rstrip("/"), mailer=o.mailer_url.rstrip("/"),
                        audit=o.audit_url.rstrip("/"), shipping=o.shipping_url.rstrip("/"))


class Shopper(HttpUser):
    def on_start(self) -> None:
        # One customer per shopper: its points add up over its orders.
        self.customer_id = f"{run.id}-c{next(run.shoppers)}"

    def wait_time(self) -> float:
        # Each of N shoppers visits every N / rate seconds: `rate` visits/s together.
        runner = self.environment.runner
        users = max(1, runner.target_user_count if runner else 1)
        return constant_pacing(users / self.environment.parsed_options.rate)(self)

    @task
    def visit(self) -> None:
        urls = _urls(self.environment)
        visit = next(run.visits)
        headers = {"X-Correlation-ID": f"{run.id}-{visit}"}
        order_id = str(uuid.uuid4())
        amount = random.randrange(100, 50_000)
        paid = self._send(
            "POST", "/payments", PAY, {201},
            json={"order_id": order_id, "customer_id": self.customer_id,
                  "email": f"{self.customer_id}@example.com", "amount": amount,
                  "currency": "JPY"},
            headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        if paid is None:
            return
        payment = Payment(order_id=order_id, customer_id=self.customer_id, amount=amount,
                          correlation_id=headers["X-Correlation-ID"])
        run.payments[order_id] = payment
        # What a customer looks at after paying (the effects come later: often empty yet).
        self.client.get(f"{urls.points}/customers/{self.customer_id}/points",
                        name="/customers/[id]/points", headers=headers)
        for url, name in ((f"{urls.mailer}/mails", "/mails"),
                          (f"{urls.audit}/events", "/events"),
                          (f"{urls.shipping}/shipments", "/shipments")):
            self.client.get(url, params={"order_id": order_id}, headers=headers,
                            name=f"{name}?order_id=[id]")
        if random.random() < self.environment.parsed_options.refunds:
            path = f"/payments/{paid['payment_id']}/refund"
            if self._send("POST", path, REFUND, {200}, headers=headers) is not None:
                run.payments[order_id] = dataclasses.replace(payment, refunded=True)
                run.refunds += 1

    def _send(self, method: str, path: str, name: str, ok: set[int], **kwargs) -> dict | None:
        """The request, tried again (same body and headers, so the same Idempotency-Key) on
        the answers a client retries; the JSON body of an `ok` answer, or None (a failure).
        A retried answer is counted as its own row (`… (retried 503)`), not as a failure."""
        attempts = self.environment.parsed_options.attempts
        for attempt in range(1, attempts + 1):
            with self.client.request(method, path, name=name, catch_response=True,
                                     **kwargs) as response:
                status = response.status_code
                if status in ok:
                    return response.json()
                if status in retry.RETRYABLE and attempt < attempts:
                    response.request_meta["name"] = f"{name} (retried {status or 'no answer'})"
                    response.success()
                    run.retried += 1
                    pause = retry.pause_before(attempt, response.headers.get("Retry-After"))
                elif name == REFUND and status == 409 and attempt > 1:
                    # The retried refund may have gone through the first time: ask.
                    response.success()
                    current = self.client.get(path.removesuffix("/refund"),
                                              name="/payments/[id]").json()
                    return current if current.get("status") == "refunded" else None
                else:
                    response.failure(f"{status}: {response.text[:200]}")
                    return None
            time.sleep(pause)
        return None


@events.test_start.add_listener
def _start(environment: Environment, **_kwargs) -> None:
    global run
    run = Run(id=environment.parsed_options.run_id or options.new_run_id())
    log.info("load run %s: correlation ids %s-<visit>, customers %s-c<n>", run.id, run.id,
             run.id)


@events.test_stop.add_listener
def _stop(environment: Environment, **_kwargs) -> None:
    """Check the effects in the background, so the web UI's stop button does not wait for it
    (its summary goes to the log); a headless run waits for it before it quits."""
    this, payments = run, list(run.payments.values())
    urls, settle = _urls(environment), environment.parsed_options.settle_seconds

    def check() -> None:
        log.info("load run %s: checking the effects of %d payments (up to %.0f s)",
                 this.id, len(payments), settle)
        try:
            this.wrong = checker.verify(payments, urls, settle_seconds=settle)
        except Exception as exc:  # a service down: reported, and the run fails
            this.check_error = f"could not read the effects: {type(exc).__name__}: {exc}"
        this.summary = report.summary(this.id, _totals(environment, this), this.wrong,
                                      this.check_error)
        if not environment.parsed_options.headless:
            log.info("%s", this.summary)

    this.check = gevent.spawn(check)


def _totals(environment: Environment, this: Run) -> report.Totals:
    total = environment.stats.total
    slowest = total.max_response_time or 0.0
    # Locust keeps response times rounded (to 10 ms above 100 ms): a percentile can come out
    # above the slowest request, which it cannot be.
    percentiles = {f"p{round(q * 100)}": min(total.get_response_time_percentile(q) or 0.0,
                                             slowest) for q in (0.5, 0.95, 0.99)}
    return report.Totals(
        requests=total.num_requests, failures=total.num_failures,
        requests_per_second=total.total_rps,
        percentiles_ms={**percentiles, "max": slowest},
        payments=len(this.payments), refunds=this.refunds, retried=this.retried,
    )


@events.quitting.add_listener
def _quitting(environment: Environment, **_kwargs) -> None:
    """Headless: wait for the check; the run passes only with no failure and every effect."""
    if run.check is None:
        return
    run.check.join()
    environment.process_exit_code = report.exit_code(_totals(environment, run), run.wrong)


@events.quit.add_listener
def _quit(**_kwargs) -> None:
    """Last, under Locust's own tables: the run's summary."""
    if run.summary:
        print(f"\n{run.summary}", flush=True)
