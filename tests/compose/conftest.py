"""Shared helpers of the compose checks: there is no Docker engine here, so the compose file is
read the way `docker compose config` would read it (YAML, then ${VAR} from .env)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from messaging import spec

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_FILE = ROOT / ".env"
DEFINITIONS_FILE = ROOT / "deploy" / "rabbitmq" / "definitions.json"

# The services and their ports come from the specs (messaging/spec.py).
APP_SERVICES = spec.names()
CONSUMERS = tuple(s.name for s in spec.consumers())
CONTRACT_PORTS = {s.name: s.port for s in spec.installed()}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR; `$$` is a literal dollar.
_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def variables_used(text: str) -> set[str]:
    return {m.group(1) or m.group(4) for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution, applied to every string of the parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            use_default = current is None or (op == ":-" and current == "")
            return arg if use_default else current
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise KeyError(f"{name}: {arg}")
        if current is None:
            raise KeyError(f"{name} is used by docker-compose.yml but not set in .env")
        return current

    return _VARIABLE.sub(substitute, value)


def load_compose(env: dict[str, str] | None = None) -> dict:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return interpolate(raw, read_env_file() if env is None else env)


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="session")
def env_file() -> dict[str, str]:
    return read_env_file()


@pytest.fixture(scope="session")
def apply_definitions():
    return load_module(ROOT / "deploy" / "rabbitmq" / "apply_definitions.py", "apply_definitions")


@pytest.fixture(scope="session")
def compose_tools():
    """The helpers above, for tests (conftest modules are not importable by name here)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        read_env_file=read_env_file,
        variables_used=variables_used,
        interpolate=interpolate,
        load_compose=load_compose,
        load_module=load_module,
    )
