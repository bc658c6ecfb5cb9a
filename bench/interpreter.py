"""``--services-python``: which interpreter runs the services, and which tree they come from.

For a same-run before/after, the current bench drives the services of an earlier tree (an
export of an older commit with its own ``.venv``). The results must say which code ran, so
the bench asks that interpreter where the service packages are (``probe``), takes the
workspace root above them (``workspace_root``: the folder holding ``uv.lock``) and its commit
(``tree_commit``: ``git -C`` when the tree is a checkout, else a ``SOURCE_COMMIT`` note written
next to an exported tree).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOTE = "SOURCE_COMMIT"  # written by the export recipe: the commit an archive came from

_PROBE = """
import importlib.util, json, platform, sys
origins = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a broken parent package: report it as not found
        spec = None
    origins[name] = spec.origin if spec is not None else None
print(json.dumps({"version": platform.python_version(), "prefix": sys.prefix,
                  "origins": origins}))
"""


class InterpreterError(Exception):
    """The interpreter given cannot run the services; the message says why."""


def absolute_python(python: str) -> str:
    """An absolute path for ``python`` (a path, or a name looked up on PATH), since the
    services run from their own tree. Not resolved: a venv's ``python`` is a symlink, and only
    called through the link does it find its venv."""
    if os.sep in python:
        return os.path.abspath(python)
    return shutil.which(python) or python


def probe(python: str, modules: Sequence[str], cwd: Path | None = None) -> dict[str, Any]:
    """Run ``python`` once: its version, ``sys.prefix``, and where each module would load from.

    Raises ``InterpreterError`` when it does not run or cannot find one of ``modules``.
    """
    path = Path(python)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise InterpreterError(f"{python}: not an executable file")
    try:
        done = subprocess.run(
            [python, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=60,
            cwd=cwd,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InterpreterError(f"{python}: does not run ({exc})") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InterpreterError(f"{python}: exited with {done.returncode} ({tail})")
    try:
        info: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise InterpreterError(f"{python}: unexpected probe output {done.stdout!r}") from exc
    missing = [m for m, origin in info["origins"].items() if origin is None]
    if missing:
        raise InterpreterError(
            f"{python}: cannot import {', '.join(missing)} (is that tree installed? "
            "make install in it)"
        )
    return info


def workspace_root(origin: str | Path) -> Path | None:
    """The nearest folder above a module file that holds ``uv.lock``: the tree it came from."""
    for parent in Path(origin).absolute().parents:
        if (parent / "uv.lock").is_file():
            return parent
    return None


def tree_commit(tree: Path) -> dict[str, Any]:
    """``{"commit", "from", "dirty"}`` of a tree: git when ``tree`` is its own checkout's top
    (not a folder inside another repository), else the ``SOURCE_COMMIT`` note, else unknown."""
    try:
        top = subprocess.run(["git", "-C", str(tree), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10)
        if top.returncode == 0 and Path(top.stdout.strip()).resolve() == tree.resolve():
            head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, timeout=10, check=True)
            status = subprocess.run(
                ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=30, check=True)
            return {"commit": head.stdout.strip(), "from": "git",
                    "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    note = tree / NOTE
    if note.is_file():
        text = note.read_text(encoding="utf-8", errors="replace").strip()
        return {"commit": text.split()[0] if text else None, "from": NOTE, "dirty": None}
    return {"commit": None, "from": None, "dirty": None}


def describe(python: str, modules: Sequence[str]) -> dict[str, Any]:
    """What the results JSON records about the services' interpreter; raises
    ``InterpreterError`` when it cannot run the services."""
    info = probe(python, modules, cwd=Path("/"))  # no folder of the caller's on its path
    first = next(iter(info["origins"].values()))
    tree = workspace_root(first)
    return {
        "python": python,
        "python_version": info["version"],
        "prefix": info["prefix"],
        "modules": info["origins"],
        "tree": str(tree) if tree else None,
        **(tree_commit(tree) if tree else {"commit": None, "from": None, "dirty": None}),
    }
