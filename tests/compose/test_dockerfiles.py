"""The one service Dockerfile (deploy/service.Dockerfile), read for every service with the build
args compose gives it: its shape, and its install step replayed natively (same COPYs, same `uv`
commands, frozen) so a stale lock or a wrong package name fails here and not in `docker build`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

from devstack.tools import find_uv
from messaging import spec

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "service.Dockerfile"
# The load generator's (compose profile `load`): no service, so an image of its own.
LOAD_DOCKERFILE = ROOT / "deploy" / "load.Dockerfile"
# From the specs: every service is built from the one Dockerfile and exposes its default port.
APP_SERVICES = spec.names()
CONTRACT_PORTS = {s.name: str(s.port) for s in spec.installed()}
# What .dockerignore keeps out of the build context, as far as these COPYs are concerned.
IGNORED = shutil.ignore_patterns(".venv", "__pycache__", "*.pyc", ".pytest_cache", "tests")
# The instructions whose arguments Docker expands ${VAR} in (RUN's shell expands its own;
# CMD and HEALTHCHECK are not expanded at all; FROM sees only the ARGs before the first FROM).
EXPANDED = {"ARG", "ENV", "COPY", "ADD", "EXPOSE", "WORKDIR", "USER", "LABEL"}
# ${VAR}, ${VAR:-default}, $VAR
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")



class Instruction(NamedTuple):
    kind: str
    args: str
    scope: dict[str, str]  # the ARG and ENV values a RUN gets as its environment


Stage = list[Instruction]


def _expand(text: str, scope: Mapping[str, str]) -> str:
    """Docker's substitution: a variable in scope is replaced (an ARG without a value by "");
    one it does not know here (PATH of the base image) is left as written."""

    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        if name not in scope:
            return match.group(0)
        return scope[name] or (match.group(2) or "")

    return _VARIABLE.sub(one, text)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def _stages(text: str, build_args: Mapping[str, str]) -> list[Stage]:
    """The stages, each instruction's arguments expanded as Docker expands them with these
    build args; RUN keeps its text (its shell expands it from its scope)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    scope: dict[str, str] = {}
    for kind, args in _instructions(text):
        if kind == "ARG":
            name, eq, default = _expand(args, scope).partition("=")
            if not stages:
                global_args[name] = build_args.get(name, default if eq else "")
            else:
                scope[name] = build_args.get(name, default if eq else global_args.get(name, ""))
            continue
        if kind == "FROM":
            stages.append([])
            scope = {}  # ARG and ENV values do not cross stages
        elif not stages:
            raise AssertionError(f"{kind} before the first FROM")
        if kind in EXPANDED:
            args = _expand(args, scope)
        if kind == "ENV":
            scope.update(_env_values(args))
        stages[-1].append(Instruction(kind, args, dict(scope)))
    return stages


def _env_values(args: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", args))


def _command(cmd: str, env: Mapping[str, str]) -> list[str]:
    """What CMD runs as PID 1: the exec form as it is, or what `sh -c "exec ..."` execs."""
    argv = json.loads(cmd)
    assert isinstance(argv, list), f"CMD is not in exec form: {cmd}"
    if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        words = shlex.split(argv[2])
        # Without exec the shell stays PID 1 and `docker stop`'s SIGTERM never reaches python.
        assert words[0] == "exec", f"the shell does not exec the service: {cmd}"
        return [_expand(word, env) for word in words[1:]]
    return argv


def _build_args(compose: dict, service: str) -> dict[str, str]:
    return {key: str(value) for key, value in compose["services"][service]["build"]["args"].items()}


def check_runtime_image(stages: list[Stage], service: str) -> None:
    runtime = {kind: args for kind, args, _ in stages[-1]}
    env = stages[-1][-1].scope
    assert runtime["FROM"] == "${PYTHON_IMAGE}"
    assert runtime["USER"] not in ("", "root", "0")
    assert _command(runtime["CMD"], env) == ["python", "-m", service]
    assert runtime["EXPOSE"] == CONTRACT_PORTS[service]
    assert env["PORT"] == CONTRACT_PORTS[service]
    assert env["HOST"] == "0.0.0.0"  # reachable from the other containers
    check = runtime["HEALTHCHECK"]
    assert "urllib.request" in check and "/healthz" in check and "127.0.0.1" in check
    assert "curl" not in check and "wget" not in check
    assert "--from=build /app/.venv /app/.venv" in runtime["COPY"]


def check_build_stage(stages: list[Stage], service: str) -> None:
    build = stages[0]
    pip = [args for kind, args, _ in build if kind == "RUN" and "pip install" in args]
    assert pip and re.search(r"\buv==\d+\.\d+\.\d+\b", pip[0])
    syncs = [(args, scope) for kind, args, scope in build if kind == "RUN" and "uv sync" in args]
    assert len(syncs) == 2
    for sync, scope in syncs:
        flags = shlex.split(_expand(sync, scope))
        for flag in ("--frozen", "--no-dev", "--no-default-groups"):
            assert flag in flags, (service, flag)
        assert flags[flags.index("--package") + 1] == service
    # Manifests and the lock before any code, so a code change reuses the dependency layer.
    copies = [a for kind, a, _ in build if kind == "COPY" or (kind == "RUN" and "uv sync" in a)]
    first_sync = next(i for i, args in enumerate(copies) if "uv sync" in args)
    assert all(c.split()[0].endswith(("pyproject.toml", "uv.lock")) for c in copies[:first_sync])


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_service_is_built_from_the_one_dockerfile(compose, service):
    build = compose["services"][service]["build"]
    assert (build["context"], build["dockerfile"]) == (".", "deploy/service.Dockerfile")
    # The port comes from .env, like the service's PORT; the specs say which it must be.
    assert _build_args(compose, service) == {"SERVICE": service, "PORT": CONTRACT_PORTS[service]}
    assert compose["services"][service]["environment"]["PORT"] == build["args"]["PORT"]


@pytest.mark.unit
def test_no_service_has_a_dockerfile_of_its_own():
    assert sorted(ROOT.glob("services/*/*Dockerfile*")) == []


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_runtime_image_shape(compose, service):
    text = DOCKERFILE.read_text(encoding="utf-8")
    check_runtime_image(_stages(text, _build_args(compose, service)), service)


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_uv_is_pinned_and_dev_groups_are_left_out(compose, service):
    text = DOCKERFILE.read_text(encoding="utf-8")
    check_build_stage(_stages(text, _build_args(compose, service)), service)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("USER app", "USER root"),
        ('"exec python -m', '"python -m'),  # the shell would stay PID 1
        ("EXPOSE ${PORT}", "EXPOSE 8001"),
        ("PORT=${PORT}", "PORT=8001"),
        ("HOST=0.0.0.0", "HOST=127.0.0.1"),
        ("CMD [\"python\", \"-c\"", "CMD [\"curl\", \"-c\""),
        ("--frozen --no-dev --no-default-groups --package ${SERVICE} --no-editable",
         "--no-dev --no-default-groups --package ${SERVICE} --no-editable"),
        ("--package ${SERVICE} --no-editable", "--package points --no-editable"),
        ("uv==0.13.9", "uv"),
        ("COPY libs/messaging/pyproject.toml libs/messaging/\n",
         "COPY libs/messaging libs/messaging\n"),  # code before the dependency layer
    ],
)
def test_the_shape_checks_can_fail(old, new):
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    build_args = {"SERVICE": "payment", "PORT": CONTRACT_PORTS["payment"]}
    stages = _stages(text.replace(old, new), build_args)
    with pytest.raises(AssertionError):
        check_runtime_image(stages, "payment")
        check_build_stage(stages, "payment")


def uv() -> str:
    found = find_uv()
    if found is None:
        pytest.fail("uv not found (UV, PATH, ~/.local/bin/uv): run the tests with `make test`, "
                    "which installs it")
    return found


def _replay_build_stage(build_args: Mapping[str, str], workdir: Path, venv: Path,
                        dockerfile: Path = DOCKERFILE) -> list[str]:
    """Run the build stage's COPY steps and its RUN steps but the uv install (the build-arg
    check, `uv sync`) in `workdir`; returns the `uv sync` commands run."""
    text = dockerfile.read_text(encoding="utf-8")
    build = _stages(text, build_args)[0]
    ran = []
    for kind, args, scope in build:
        if kind == "COPY":
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
        elif kind == "RUN" and "pip install" not in args:
            env = {**os.environ, **scope, "UV_PROJECT_ENVIRONMENT": str(venv)}
            env.pop("VIRTUAL_ENV", None)
            if args.startswith("uv sync"):
                command = [uv(), *shlex.split(_expand(args, scope))[1:]]
            else:
                command = ["sh", "-c", args]
            result = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300
            )
            assert result.returncode == 0, f"{args}\n{result.stderr}"
            if args.startswith("uv sync"):
                ran.append(args)
    return ran


@pytest.mark.integration
@pytest.mark.parametrize("service", APP_SERVICES)
def test_install_step_works_natively(compose, service, tmp_path):
    workdir, venv = tmp_path / "src", tmp_path / "venv"
    workdir.mkdir()

    ran = _replay_build_stage(_build_args(compose, service), workdir, venv)
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


@pytest.mark.unit
@pytest.mark.parametrize("missing", ["SERVICE", "PORT"])
def test_a_build_without_the_service_or_its_port_stops_at_once(missing, tmp_path):
    """The build-arg check runs before any COPY: nothing is copied, nothing installed."""
    args = {"SERVICE": "points", "PORT": CONTRACT_PORTS["points"]}
    del args[missing]
    with pytest.raises(AssertionError, match="build args SERVICE and PORT are required"):
        _replay_build_stage(args, tmp_path, tmp_path / "venv")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_a_service_without_a_folder_does_not_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-service"):
        _replay_build_stage({"SERVICE": "no-such-service", "PORT": "8009"}, tmp_path, tmp_path)


@pytest.mark.unit
def test_the_load_image_has_its_own_dockerfile_serving_the_web_ui_as_no_root(compose):
    build = compose["services"]["load"]["build"]
    assert (build["context"], build["dockerfile"]) == (".", "deploy/load.Dockerfile")
    stages = _stages(LOAD_DOCKERFILE.read_text(encoding="utf-8"), {})
    check_build_stage(stages, "load")
    runtime = {kind: args for kind, args, _ in stages[-1]}
    assert runtime["USER"] not in ("", "root", "0")
    assert runtime["EXPOSE"] == "8089"
    assert _command(runtime["CMD"], {}) == ["python", "-m", "load", "--web",
                                            "--web-host", "0.0.0.0"]
    assert "urllib.request" in runtime["HEALTHCHECK"] and ":8089/" in runtime["HEALTHCHECK"]
    # The same Python as the services' images.
    pythons = {re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", f.read_text(encoding="utf-8"), re.M)[0]
               for f in (DOCKERFILE, LOAD_DOCKERFILE)}
    assert len(pythons) == 1, pythons


@pytest.mark.integration
def test_the_load_install_step_works_natively(tmp_path):
    workdir, venv = tmp_path / "src", tmp_path / "venv"
    workdir.mkdir()

    ran = _replay_build_stage({}, workdir, venv, dockerfile=LOAD_DOCKERFILE)
    assert len(ran) == 2

    shutil.rmtree(workdir)  # like the runtime image: only the venv
    probe = (
        "import importlib.util, json\n"
        "names = ['load', 'load.shop', 'load.__main__', 'locust', 'messaging', 'ruff']\n"
        "print(json.dumps({n: bool(importlib.util.find_spec(n.split('.')[0]))"
        " and bool(importlib.util.find_spec(n)) for n in names}))\n"
    )
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"load": True, "load.shop": True,
                                         "load.__main__": True, "locust": True,
                                         "messaging": False, "ruff": False}


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
