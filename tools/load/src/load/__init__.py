"""Shop traffic for people to watch (docs/load.md): a Locust scenario (`shop.py`) against the
running stack, `python -m load` to run it, and the check that every accepted payment's
effects exist afterwards (`effects.py`, `checker.py`)."""
