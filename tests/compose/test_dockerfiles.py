"""The Dockerfiles: their shape, and their install step replayed natively (same COPYs, same `uv`
commands, frozen) so a stale lock or a wrong package name fails here and not in `docker build`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.tools import find_uv
from messaging import spec

ROOT = Path(__file__).resolve().parents[2]
# From the specs: every service has a Dockerfile exposing its default port.
APP_SERVICES = spec.names()
CONTRACT_PORTS = {s.name: str(s.port) for s in spec.installed()}
# What .dockerignore keeps out of the build context, as far as these COPYs are concerned.
IGNORED = shutil.ignore_patterns(".venv", "__pycache__", "*.pyc", ".pytest_cache", "tests")


def _instructions(service: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "services" / service / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def _stages(service: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(service):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_runtime_image_shape(service):
    runtime = dict((kind, args) for kind, args in _stages(service)[-1])
    assert runtime["FROM"] == "${PYTHON_IMAGE}"
    assert runtime["USER"] not in ("", "root", "0")
    assert shlex.split(runtime["CMD"].strip("[]").replace(",", " ")) == ["python", "-m", service]
    assert runtime["EXPOSE"] == CONTRACT_PORTS[service]
    assert f"PORT={CONTRACT_PORTS[service]}" in runtime["ENV"]
    assert "HOST=0.0.0.0" in runtime["ENV"]  # reachable from the other containers
    check = runtime["HEALTHCHECK"]
    assert "urllib.request" in check and "/healthz" in check and "127.0.0.1" in check
    assert "curl" not in check and "wget" not in check
    assert "--from=build /app/.venv /app/.venv" in runtime["COPY"]


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_uv_is_pinned_and_dev_groups_are_left_out(service):
    build = _stages(service)[0]
    pip = [args for kind, args in build if kind == "RUN" and "pip install" in args]
    assert pip and re.search(r"\buv==\d+\.\d+\.\d+\b", pip[0])
    syncs = [args for kind, args in build if kind == "RUN" and "uv sync" in args]
    assert len(syncs) == 2
    for sync in syncs:
        flags = shlex.split(sync)
        for flag in ("--frozen", "--no-dev", "--no-default-groups"):
            assert flag in flags, (service, flag)
        assert flags[flags.index("--package") + 1] == service


def uv() -> str:
    found = find_uv()
    if found is None:
        pytest.fail("uv not found (UV, PATH, ~/.local/bin/uv): run the tests with `make test`, "
                    "which installs it")
    return found


def _replay_build_stage(service: str, workdir: Path, venv: Path) -> list[str]:
    """Run the build stage's COPY and `uv sync` steps in `workdir`; returns the commands run."""
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    ran = []
    for kind, args in _stages(service)[0]:
        if kind == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                if key != "UV_PROJECT_ENVIRONMENT":
                    env[key] = value
        elif kind == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                src = ROOT / source
                target = workdir / dest
                if src.is_dir():
                    shutil.copytree(src, target, ignore=IGNORED, dirs_exist_ok=True)
                else:
                    if dest.endswith("/") or dest in (".", "./"):
                        target = target / src.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        elif kind == "RUN" and args.startswith("uv sync"):
            command = [uv(), *shlex.split(args)[1:]]
            result = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300
            )
            assert result.returncode == 0, f"{args}\n{result.stderr}"
            ran.append(args)
    return ran


@pytest.mark.integration
@pytest.mark.parametrize("service", APP_SERVICES)
def test_install_step_works_natively(service, tmp_path):
    workdir, venv = tmp_path / "src", tmp_path / "venv"
    workdir.mkdir()

    ran = _replay_build_stage(service, workdir, venv)
    assert len(ran) == 2

    # Like the runtime image: only the venv, no source tree.
    shutil.rmtree(workdir)
    probe = (
        "import importlib.util, json, sys\n"
        f"names = ['{service}', '{service}.__main__', '{service}.settings', 'messaging',"
        " 'pytest', 'ruff', 'matplotlib']\n"
        "print(json.dumps({n: bool(importlib.util.find_spec(n.split('.')[0]))"
        " and bool(importlib.util.find_spec(n)) for n in names}))\n"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = __import__("json").loads(result.stdout)
    assert found == {
        service: True,
        f"{service}.__main__": True,
        f"{service}.settings": True,
        "messaging": True,
        "pytest": False,
        "ruff": False,
        "matplotlib": False,
    }
    other_services = set(APP_SERVICES) - {service}
    installed = {p.name.split("-")[0] for p in venv.glob("lib/python*/site-packages/*.dist-info")}
    assert installed & other_services == set()


@pytest.mark.integration
def test_lock_is_current():
    """`--frozen` installs the lock as it is; a lock that lags a pyproject.toml fails here."""
    result = subprocess.run(
        [uv(), "lock", "--check", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
