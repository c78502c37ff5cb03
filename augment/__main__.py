"""`python -m augment ...`: the same command line as `augment ...`, where the console script is
not on PATH (a cluster node's plain Python, a notebook's `!python -m augment`)."""

import sys

from augment.cli import main

if __name__ == "__main__":  # not when a tool walks the package's modules
    sys.exit(main())
