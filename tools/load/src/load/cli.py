"""`python -m load` (`make load`): the shop scenario (shop.py) by Locust, headless for
`--duration` with a summary at the end, or with Locust's web UI (`--web`). Defaults: the
native stack of `make run` (payment on 127.0.0.1:8000, the others on 8001-8004).

Arguments it does not know go to Locust as they are (`--refunds 0.2`, `--points-url …`,
`--csv out`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from load import options

SCENARIO = Path(__file__).with_name("shop.py")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m load", description="Shop traffic against Mini EC (docs/load.md).",
        epilog="Any other argument goes to Locust: --refunds SHARE (0.1), --run-id NAME, "
               "--settle-seconds S (60), --attempts N (5), --points-url, --mailer-url, "
               "--audit-url, --shipping-url (127.0.0.1:8001-8004), and Locust's own "
               "(python -m locust --help).")
    parser.add_argument("--users", type=options.positive_int, default=10,
                        help="shoppers at once (10)")
    parser.add_argument("--rate", type=options.positive_float, default=5.0,
                        help="shop visits (payments) per second, all shoppers together (5)")
    parser.add_argument("--duration", default="60s",
                        help="how long, headless: 30s, 5m, 1h (60s)")
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="payment's base URL")
    parser.add_argument("--web", action="store_true",
                        help="Locust's web UI on port 8089 instead of a headless run")
    parser.add_argument("--web-host", default="127.0.0.1",
                        help="the address the web UI listens on (127.0.0.1)")
    return parser.parse_known_args(argv)


def locust_argv(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """Locust's command line for these arguments."""
    argv = ["locust", "-f", str(SCENARIO), "--host", args.host,
            "--users", str(args.users), "--spawn-rate", str(args.users),
            "--rate", str(args.rate),
            # A stopping shopper finishes its visit: a refund cut off halfway would leave
            # the check not knowing whether it happened.
            "--stop-timeout", "30s"]
    if args.web:
        argv += ["--web-host", args.web_host, "--web-port", "8089"]
    else:
        argv += ["--headless", "--run-time", args.duration, "--only-summary"]
    return argv + rest


def main() -> None:
    args, rest = parse(sys.argv[1:])
    sys.argv = locust_argv(args, rest)
    from locust.main import main as locust_main  # patches the standard library: run it last

    locust_main()
