"""`python -m bench`: see bench/run.py."""

from bench.run import main

# Guarded: the ceiling scenario spawns processes, which import this module again.
if __name__ == "__main__":
    raise SystemExit(main())
