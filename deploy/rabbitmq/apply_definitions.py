"""Apply deploy/rabbitmq/definitions.json (users, permissions, topology) to a RabbitMQ broker.

definitions.json is committed without passwords. This script adds them: each user's password
comes from `RABBITMQ_<USER>_PASSWORD` (e.g. RABBITMQ_PAYMENT_PASSWORD) and is stored as a salted
SHA-256 hash, the broker's `rabbit_password_hashing_sha256` format.

Two ways to use it:

    # compose: render a file the broker imports at boot (`load_definitions`); stdlib only
    python apply_definitions.py --render /defs/definitions.json

    # a running broker (the native stack, the tests): import through the management API into
    # a vhost of your choice, with prefixed user names so nothing collides with existing users
    python deploy/rabbitmq/apply_definitions.py --vhost mini-ec --user-prefix dev-
    python deploy/rabbitmq/apply_definitions.py --vhost mini-ec --user-prefix dev- --delete

`apply` prints one AMQP URL per service as JSON (`{"payment": "amqp://dev-payment:…@…/mini-ec"}`);
a password missing from the environment is generated, so the URLs are the only copy of it.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

DEFINITIONS = Path(__file__).with_name("definitions.json")
TEMPLATE_VHOST = "shop"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


def load(path: Path = DEFINITIONS) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's salted SHA-256: base64(salt + sha256(salt + utf8(password))), 4-byte salt."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def user_names(definitions: dict) -> list[str]:
    return [user["name"] for user in definitions["users"]]


def password_env_var(user: str) -> str:
    return f"RABBITMQ_{user.upper()}_PASSWORD"


def passwords_from_env(definitions: dict, *, generate_missing: bool) -> dict[str, str]:
    passwords, missing = {}, []
    for user in user_names(definitions):
        value = os.environ.get(password_env_var(user), "")
        if value:
            passwords[user] = value
        elif generate_missing:
            passwords[user] = secrets.token_urlsafe(18)
        else:
            missing.append(password_env_var(user))
    if missing:
        raise SystemExit(f"apply_definitions: missing password settings: {', '.join(missing)}")
    return passwords


def render(
    definitions: dict,
    passwords: dict[str, str],
    *,
    vhost: str = TEMPLATE_VHOST,
    user_prefix: str = "",
) -> dict:
    """The definitions with passwords hashed in, moved to `vhost`, user names prefixed."""
    out = copy.deepcopy(definitions)
    for user in out["users"]:
        user["password_hash"] = hash_password(passwords[user["name"]])
        user["hashing_algorithm"] = HASHING_ALGORITHM
        user["name"] = user_prefix + user["name"]
    out["vhosts"] = [{"name": vhost}]
    for permission in out["permissions"]:
        permission["user"] = user_prefix + permission["user"]
    for section in ("permissions", "exchanges", "queues", "bindings", "policies"):
        for item in out.get(section, []):
            item["vhost"] = vhost
    return out


def amqp_urls(
    definitions: dict, passwords: dict[str, str], *, vhost: str, user_prefix: str, amqp_base: str
) -> dict[str, str]:
    base = amqp_base.rstrip("/")
    scheme, _, hostport = base.partition("://")
    urls = {}
    for user in user_names(definitions):
        login = f"{quote(user_prefix + user, safe='')}:{quote(passwords[user], safe='')}"
        urls[user] = f"{scheme}://{login}@{hostport}/{quote(vhost, safe='')}"
    return urls


class ManagementAPI:
    """The few management-API calls this needs (httpx, imported only when a broker is used)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        import httpx

        self._client = httpx.Client(base_url=url.rstrip("/"), auth=(user, password), timeout=10)

    def close(self) -> None:
        self._client.close()

    def import_definitions(self, definitions: dict) -> None:
        # The global endpoint: it creates the vhost, users and permissions too (the per-vhost
        # one ignores them); every name in `definitions` is already vhost- and prefix-specific.
        self._client.post("/api/definitions", json=definitions).raise_for_status()

    def delete(self, vhost: str, users: list[str]) -> None:
        for path in [f"/api/vhosts/{quote(vhost, safe='')}"] + [
            f"/api/users/{quote(user, safe='')}" for user in users
        ]:
            response = self._client.delete(path)
            if response.status_code != 404:
                response.raise_for_status()


def apply(
    api: ManagementAPI,
    definitions: dict,
    passwords: dict[str, str],
    *,
    vhost: str,
    user_prefix: str,
) -> None:
    api.import_definitions(render(definitions, passwords, vhost=vhost, user_prefix=user_prefix))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definitions", type=Path, default=DEFINITIONS)
    parser.add_argument("--vhost", default=TEMPLATE_VHOST)
    parser.add_argument("--user-prefix", default="")
    parser.add_argument(
        "--render", type=Path, metavar="FILE", help="write the file, touch no broker"
    )
    parser.add_argument("--delete", action="store_true", help="remove the vhost and the users")
    parser.add_argument(
        "--management-url",
        default=os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672"),
    )
    parser.add_argument(
        "--management-user", default=os.environ.get("RABBITMQ_MANAGEMENT_USER", "guest")
    )
    parser.add_argument(
        "--management-password", default=os.environ.get("RABBITMQ_MANAGEMENT_PASSWORD", "guest")
    )
    parser.add_argument("--amqp-base", default="amqp://127.0.0.1:5672", help="for the printed URLs")
    args = parser.parse_args(argv)
    definitions = load(args.definitions)

    if args.render:
        passwords = passwords_from_env(definitions, generate_missing=False)
        rendered = render(definitions, passwords, vhost=args.vhost, user_prefix=args.user_prefix)
        args.render.parent.mkdir(parents=True, exist_ok=True)
        args.render.write_text(json.dumps(rendered, indent=2) + "\n", encoding="utf-8")
        print(f"apply_definitions: wrote {args.render} (vhost {args.vhost!r})", file=sys.stderr)
        return 0

    api = ManagementAPI(args.management_url, args.management_user, args.management_password)
    try:
        if args.delete:
            api.delete(args.vhost, [args.user_prefix + user for user in user_names(definitions)])
            return 0
        passwords = passwords_from_env(definitions, generate_missing=True)
        apply(api, definitions, passwords, vhost=args.vhost, user_prefix=args.user_prefix)
    finally:
        api.close()
    urls = amqp_urls(
        definitions,
        passwords,
        vhost=args.vhost,
        user_prefix=args.user_prefix,
        amqp_base=args.amqp_base,
    )
    print(json.dumps(urls, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
