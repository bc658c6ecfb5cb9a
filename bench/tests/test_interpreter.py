"""--services-python: which interpreter and which tree ran the services."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.interpreter import (
    NOTE,
    InterpreterError,
    absolute_python,
    describe,
    probe,
    tree_commit,
    workspace_root,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_absolute_python_keeps_the_venv_symlink(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_python(".venv/bin/python") == str(tmp_path / ".venv/bin/python")
    assert absolute_python("/x/.venv/bin/python") == "/x/.venv/bin/python"
    assert absolute_python("sh") == subprocess.run(
        ["sh", "-c", "command -v sh"], capture_output=True, text=True).stdout.strip()


@pytest.mark.unit
def test_workspace_root_is_the_nearest_folder_with_uv_lock(tmp_path):
    module = tmp_path / "services/payment/src/payment/__init__.py"
    module.parent.mkdir(parents=True)
    module.touch()
    (tmp_path / "services/payment/pyproject.toml").touch()  # a member, not the root
    assert workspace_root(module) is None
    (tmp_path / "uv.lock").touch()
    assert workspace_root(module) == tmp_path


@pytest.mark.unit
def test_tree_commit_from_the_note_of_an_export(tmp_path):
    assert tree_commit(tmp_path) == {"commit": None, "from": None, "dirty": None}
    (tmp_path / NOTE).write_text("c9dfce6e01553b3d5f5a2deb838287525b25e1bb\n")
    assert tree_commit(tmp_path) == {
        "commit": "c9dfce6e01553b3d5f5a2deb838287525b25e1bb", "from": NOTE, "dirty": None}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.integration
def test_tree_commit_from_git_only_for_the_checkout_itself(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("1")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert tree_commit(tmp_path) == {"commit": head, "from": "git", "dirty": False}
    (tmp_path / "f").write_text("2")
    assert tree_commit(tmp_path)["dirty"] is True
    # a folder inside another checkout (an export unpacked there) is not that checkout
    inner = tmp_path / "export"
    inner.mkdir()
    assert tree_commit(inner) == {"commit": None, "from": None, "dirty": None}


@pytest.mark.integration
def test_describe_this_trees_interpreter():
    info = describe(sys.executable, ["payment", "inprocess"])
    assert info["python"] == sys.executable
    assert info["tree"] == str(REPO)
    assert info["modules"]["payment"].startswith(str(REPO / "services/payment"))
    assert info["from"] == "git" and info["commit"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("python", "modules", "message"),
    [
        ("/no/such/python", ["payment"], "/no/such/python: not an executable file"),
        (sys.executable, ["payment", "no_such_service_xyz"],
         "cannot import no_such_service_xyz (is that tree installed?"),
        ("/bin/false", ["payment"], "/bin/false: exited with 1 (no output)"),
    ],
)
def test_probe_refuses_an_interpreter_that_cannot_run_the_services(python, modules, message):
    with pytest.raises(InterpreterError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        probe(python, modules)
