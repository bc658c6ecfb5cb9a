"""See and steer a consuming service's consumer from the command line (its kill switch).

    python -m messaging.operations.consumerctl status <service>
    python -m messaging.operations.consumerctl pause <service> --reason "mail server maintenance"
    python -m messaging.operations.consumerctl resume <service>

It calls the service's operator routes (messaging/operations/admin.py) at `--url` (default: the
service's default port on 127.0.0.1, as `make run` and a compose container have it) with
`Authorization: Bearer $ADMIN_TOKEN`. With several replicas, each is its own consumer:
give each one's `--url`.

Exit codes: 0 done, 1 refused (token) or the service unreachable, 2 unknown service, bad
arguments or no ADMIN_TOKEN in the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from messaging import spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m messaging.operations.consumerctl",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["status", "pause", "resume"])
    parser.add_argument("service")
    parser.add_argument("--reason", help="why (pause: required)")
    parser.add_argument("--url", help="the service's base URL (default: its default port)")
    args = parser.parse_args(argv)
    if args.action == "pause" and not args.reason:
        parser.error("pause needs --reason")
    try:
        service = spec.named(args.service)
    except ValueError as exc:
        print(f"consumerctl: {exc}", file=sys.stderr)
        return 2
    if service.consumes is None:
        print(f"consumerctl: {service.name} consumes no events", file=sys.stderr)
        return 2
    url = (args.url or f"http://127.0.0.1:{service.port}").rstrip("/")
    token = os.environ.get("ADMIN_TOKEN", "")
    if args.action != "status" and not token:
        print("consumerctl: ADMIN_TOKEN is not set: pause and resume need the service's token",
              file=sys.stderr)
        return 2
    try:
        state = _call(url, args.action, args.reason, token)
    except httpx.HTTPError as exc:
        print(f"consumerctl: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"consumerctl: refused: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"consumerctl: invalid: {exc}", file=sys.stderr)
        return 2
    line = f"{service.name} consumer: {state['state']}"
    if state.get("by"):
        line += f" (by the {state['by']})"
    if state.get("reason"):
        line += f": {state['reason']}"
    if state.get("until"):
        line += f"; next probe at {state['until']}"
    print(line)
    return 0


def _call(url: str, action: str, reason: str | None, token: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10) as client:
        if action == "status":
            response = client.get("/consumer")
        else:
            response = client.post(
                f"/consumer/{action}", headers={"Authorization": f"Bearer {token}"},
                json={"reason": reason} if action == "pause" else None)
    if response.status_code == 401:
        raise PermissionError(response.json().get("detail", "401"))
    if response.status_code == 422:  # e.g. a reason with a line break
        raise ValueError("; ".join(e.get("msg", "") for e in response.json().get("detail", [])))
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


if __name__ == "__main__":
    raise SystemExit(main())
