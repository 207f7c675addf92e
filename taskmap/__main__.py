"""``python -m taskmap``: the command line (see :mod:`taskmap.cli`)."""

import sys

from taskmap.cli import main

# guarded: a spawned worker process may import the main module again
if __name__ == "__main__":
    sys.exit(main())
