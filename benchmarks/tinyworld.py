"""The tinyworld benchmark: every arm of the principle on tinyworld's shipped models.

    python -m benchmarks.tinyworld --quick      # a 1-seed smoke run
    python -m benchmarks.tinyworld --help       # seeds, difficulty, world, output

The arms, their stage graphs and the report live in ``tinyworld.lab``; this is its entry point.
"""

from __future__ import annotations

import sys

from tinyworld.lab import main

if __name__ == "__main__":
    sys.exit(main())
