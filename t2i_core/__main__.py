"""`python -m t2i_core`: the engine's command line (t2i_core.training.cli)."""
import sys

from .training.cli import main

if __name__ == "__main__":
    sys.exit(main())
