"""Command-line tools the tests run, found the way the Makefile finds them, not by `PATH` alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_uv() -> str | None:
    """The uv the Makefile uses (it exports `UV`), else one on `PATH`, else the one the
    Makefile installs with `pip --user` (`~/.local/bin/uv`)."""
    candidates = [os.environ.get("UV"), shutil.which("uv"), str(Path.home() / ".local/bin/uv")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    return None
