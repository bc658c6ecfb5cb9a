"""A real RabbitMQ 4 broker for tests on a machine without a container engine: one node or a
three-node cluster, each node in its own network namespace with its own address.

The broker is Debian trixie's `rabbitmq-server` (4.0.5, Erlang 27), installed by
`debootstrap --variant=minbase` into a root directory that is built once and cached under
/var/tmp, keyed by a hash of what goes into it: the second run starts in seconds. Every
node runs from that one root (chroot) with its own state directory bind-mounted over
/miniec and its own /etc/hosts, inside a private mount namespace (`ip netns exec` makes
one), so nothing leaks into the host and concurrent runs share the cache safely.

Nodes are named like the compose file names them (rabbit@rabbitmq, rabbit@rabbitmq-2,
rabbit@rabbitmq-3), so deploy/rabbitmq/rabbitmq.conf and cluster.conf are used unchanged.
They never touch the host's own ports: each listens on 5672/15672/4369/25672 inside its
namespace, at 10.216.<slot>.<n>, reached from the host through a bridge. A run takes a free
slot (a lock file), so parallel runs get separate addresses, namespaces (`miniec-s<slot>-*`)
and links, and a run that died is cleaned up by the next one that takes its slot.

Needs root (namespaces, mounts, chroot). `python -m devstack.rabbit4 rootfs` builds the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SUITE = "trixie"
PACKAGES = ("rabbitmq-server",)
# Bump when the way the root is built changes: a new key builds a new root.
ROOT_LAYOUT = 1
CACHE = Path(os.environ.get("MINIEC_RABBIT4_CACHE", "/var/tmp/miniec-rabbit4"))
SLOTS = range(16, 64)
HOSTNAMES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
DEPLOY = Path(__file__).resolve().parents[4] / "deploy" / "rabbitmq"


class Unavailable(RuntimeError):
    """This machine cannot run the namespaced broker (not root, or a tool is missing)."""


def unavailable_reason() -> str | None:
    """Why RabbitMQ 4 cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "RabbitMQ 4 in network namespaces needs root"
    if shutil.which("ip") is None:
        return "RabbitMQ 4 needs `ip` (iproute2)"
    return None


def _run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def ensure_apt_packages(*packages: str) -> None:
    """Install the Debian packages not installed yet (a fresh CI machine has none of them)."""
    missing = [p for p in packages
               if _run("dpkg-query", "-W", "-f=${Status}", p, check=False).stdout
               != "install ok installed"]
    if not missing:
        return
    print(f"rabbit4: installing {' '.join(missing)} with apt-get", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(3):
        update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        install = subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env,
                                 capture_output=True, text=True)
        if install.returncode == 0:
            return
        time.sleep(2 + 3 * attempt)
    raise Unavailable(f"apt-get install {' '.join(missing)} failed "
                      f"(update rc {update.returncode}): {install.stderr[-800:]}")


def apt_mirror() -> str:
    """The Debian archive this machine's apt already uses (the first non-security source)."""
    lists = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in lists:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith("#"))
            uris, suites = fields.get("URIs", "").split(), fields.get("Suites", "")
            if uris and "security" not in suites and "security" not in uris[0]:
                return uris[0]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if "://" in p)
    raise Unavailable("no Debian archive configured for apt: cannot debootstrap")


def rootfs_key() -> str:
    spec = {"suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES),
            "layout": ROOT_LAYOUT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def rootfs() -> Path:
    """The cached trixie root with rabbitmq-server in it, built on first use (~1 min)."""
    reason = unavailable_reason()
    if reason:
        raise Unavailable(reason)
    root = CACHE / f"root-{rootfs_key()}"
    if (root / ".miniec-ready").exists():
        return root
    with _locked(CACHE / "build.lock"):
        if (root / ".miniec-ready").exists():  # built by another run meanwhile
            return root
        ensure_apt_packages("debootstrap")
        building = CACHE / f"building-{rootfs_key()}-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        print(f"rabbit4: building the {SUITE} root with {', '.join(PACKAGES)} "
              f"(once; cached in {root})", file=sys.stderr, flush=True)
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(building), apt_mirror()],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise Unavailable(f"debootstrap failed: {result.stdout[-1500:]}{result.stderr[-500:]}")
        (building / "miniec").mkdir(exist_ok=True)
        (building / ".miniec-ready").write_text(json.dumps({"packages": PACKAGES}))
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
        print(f"rabbit4: root built in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return root


def definition_users() -> list[str]:
    """The users of deploy/rabbitmq/definitions.json (the services', admin, the console)."""
    return [user["name"] for user in json.loads((DEPLOY / "definitions.json").read_text())["users"]]


def render_definitions(passwords: dict[str, str]) -> dict:
    """deploy/rabbitmq/definitions.json with these passwords hashed in (vhost `shop`)."""
    sys.path.insert(0, str(DEPLOY))
    try:
        import apply_definitions
    finally:
        sys.path.pop(0)
    return apply_definitions.render(apply_definitions.load(), passwords)


@dataclass
class Node:
    index: int  # 1-based
    hostname: str
    ip: str
    netns: str
    link: str
    state: Path
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"rabbit@{self.hostname}"

    def pids(self) -> list[int]:
        out = _run("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]


@dataclass
class Rabbit4:
    """RabbitMQ 4 nodes with the project's broker settings and definitions (no guest).

    `with Rabbit4(nodes=3) as broker:` ... `broker.urls["payment"]`, `broker.kill(node)`.
    """

    nodes_wanted: int = 1
    boot_timeout: float = 120.0
    slot: int = 0
    root: Path | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    _slot_lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    # --- addresses -------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"mec{self.slot}br"

    @property
    def host_ip(self) -> str:
        return f"10.216.{self.slot}.254"

    @property
    def admin(self) -> tuple[str, str]:
        return ("admin", self.passwords["admin"])

    def management_url(self, node: Node | None = None) -> str:
        return f"http://{(node or self.nodes[0]).ip}:15672"

    def amqp_base(self, node: Node | None = None) -> str:
        return f"amqp://{(node or self.nodes[0]).ip}:5672"

    @property
    def urls(self) -> dict[str, str]:
        """Each definitions user's AMQP URL to vhost `shop` on the first node."""
        return self.urls_via(self.nodes[0].ip, 5672)

    def urls_via(self, host: str, port: int) -> dict[str, str]:
        return {user: f"amqp://{user}:{pw}@{host}:{port}/shop"
                for user, pw in self.passwords.items()}

    def api(self, node: Node | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.management_url(node), auth=self.admin, timeout=10)

    @contextlib.contextmanager
    def throwaway_vhost(self, prefix: str = "test"):
        """Yields the admin's AMQP URL to a new vhost; deleted afterwards."""
        name = f"{prefix}-{secrets.token_hex(6)}"
        with self.api() as api:
            api.put(f"/api/vhosts/{name}").raise_for_status()
            api.put(f"/api/permissions/{name}/admin",
                    json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
        try:
            yield f"amqp://admin:{self.passwords['admin']}@{self.nodes[0].ip}:5672/{name}"
        finally:
            with self.api() as api:
                api.delete(f"/api/vhosts/{name}")

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Rabbit4:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.root = rootfs()
        self._take_slot()
        try:
            run_dir = CACHE / f"run-{self.slot}"
            shutil.rmtree(run_dir, ignore_errors=True)
            self.passwords = {u: secrets.token_urlsafe(12) for u in definition_users()}
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            hosts = "127.0.0.1 localhost\n" + "".join(
                f"10.216.{self.slot}.{i} {name}\n" for i, name in enumerate(HOSTNAMES, 1))
            cookie = secrets.token_hex(16)
            definitions = render_definitions({u: p for u, p in self.passwords.items()})
            for i in range(1, self.nodes_wanted + 1):
                node = Node(i, HOSTNAMES[i - 1], f"10.216.{self.slot}.{i}",
                            f"miniec-s{self.slot}-rmq{i}", f"mec{self.slot}v{i}",
                            run_dir / f"node{i}")
                self._prepare(node, hosts, cookie, definitions)
                self.nodes.append(node)
                self._launch(node)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _take_slot(self) -> None:
        for slot in SLOTS:
            held = self._slot_lock.enter_context(_locked(CACHE / "slots" / f"{slot}.lock",
                                                         blocking=False))
            if held:
                self.slot = slot
                self._clean_slot()  # leftovers of a run that died holding this slot
                return
        raise Unavailable("every RabbitMQ 4 slot is taken")

    def _clean_slot(self) -> None:
        for ns in _run("ip", "netns", "list", check=False).stdout.split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(f"miniec-s{self.slot}-"):
                for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                _run("ip", "netns", "del", name, check=False)
        _run("ip", "link", "del", self.bridge, check=False)

    def _prepare(self, node: Node, hosts: str, cookie: str, definitions: dict) -> None:
        state = node.state
        (state / "mnesia").mkdir(parents=True)
        (state / "log").mkdir()
        (state / "hosts").write_text(hosts)
        cookie_file = state / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
        (state / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (state / "definitions.json").write_text(json.dumps(definitions))
        conf = (DEPLOY / "rabbitmq.conf").read_text().replace(
            "/etc/rabbitmq/definitions/definitions.json", "/miniec/definitions.json")
        if self.nodes_wanted > 1:
            conf += "\n" + (DEPLOY / "cluster.conf").read_text()
        (state / "rabbitmq.conf").write_text(conf)
        _run("ip", "netns", "add", node.netns)
        _run("ip", "link", "add", node.link, "type", "veth", "peer", "name", "eth0",
             "netns", node.netns)
        _run("ip", "link", "set", node.link, "master", self.bridge, "up")
        for cmd in (("addr", "add", f"{node.ip}/24", "dev", "eth0"),
                    ("link", "set", "eth0", "up"), ("link", "set", "lo", "up")):
            _run("ip", "-n", node.netns, *cmd)

    def _launch(self, node: Node) -> None:
        root = self.root
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/miniec", "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_CONFIG_FILE": "/miniec/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": "/miniec/advanced.config",
            "RABBITMQ_CONF_ENV_FILE": "/miniec/rabbitmq-env.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": "/miniec/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": "/miniec/mnesia",
            "RABBITMQ_LOG_BASE": "/miniec/log",
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": "/miniec/pid",
        }
        script = (
            "set -e\n"
            f"mount --bind {node.state} {root}/miniec\n"
            f"mount --bind {node.state}/hosts {root}/etc/hosts\n"
            f"mount -t proc proc {root}/proc\n"
            f"cd {root}/miniec\n"
            f"exec chroot {root} /usr/bin/env -i "
            + " ".join(f"{k}={v}" for k, v in env.items())
            + " /usr/lib/rabbitmq/bin/rabbitmq-server\n"
        )
        log = open(node.state / "server.log", "ab")  # noqa: SIM115 - owned by the process
        node.process = subprocess.Popen(["ip", "netns", "exec", node.netns, "sh", "-c", script],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()

    def wait_ready(self, nodes: list[Node] | None = None) -> None:
        """Every node answers its management API, and (cluster) all see each other."""
        deadline = time.monotonic() + self.boot_timeout
        for node in nodes or self.nodes:
            while True:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited:\n{self.log_tail(node)}")
                try:
                    with self.api(node) as api:
                        running = [n["name"] for n in api.get("/api/nodes").json()
                                   if n.get("running")]
                    # The management API is up before the AMQP listener: wait for both.
                    if len(running) >= len([n for n in self.nodes if n.process]):
                        socket.create_connection((node.ip, 5672), timeout=2).close()
                        break
                except (httpx.HTTPError, ValueError, TypeError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} not ready in {self.boot_timeout}s:\n"
                                       f"{self.log_tail(node)}")
                time.sleep(0.3)

    def log_tail(self, node: Node, lines: int = 40) -> str:
        path = node.state / "server.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, node: Node) -> None:
        """SIGKILL every process of the node (beam, epmd, helpers): a node's sudden death."""
        for pid in node.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=10)
            node.process = None

    def node_by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node)
        if self.slot:
            self._clean_slot()
            shutil.rmtree(CACHE / f"run-{self.slot}", ignore_errors=True)
        self.nodes = []
        self._slot_lock.close()
        self.slot = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RabbitMQ 4 in network namespaces")
    parser.add_argument("command", choices=["rootfs", "up"])
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "rootfs":
        print(rootfs())
        return 0
    # SIGTERM cleans up like Ctrl-C does (namespaces, links, node processes).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Rabbit4(nodes_wanted=args.nodes) as broker:
        print(json.dumps({"management": broker.management_url(), "admin": broker.admin,
                          "urls": broker.urls}, indent=2), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
