import sys
from pathlib import Path

# `bench` is a top-level package of the repository, not an installed one
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
