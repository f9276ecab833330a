"""How the executor starts a runner: an argument list, never a shell string."""

from __future__ import annotations

import sys
from pathlib import Path


def stage_command(kind: str, spec_path: str | Path, gpus: int = 1) -> list[str]:
    """The argv that runs one stage of ``kind`` on ``spec_path``.

    >>> stage_command("grpo", "/tmp/s.json")[1:]
    ['-m', 'runners.grpo', '/tmp/s.json']
    """
    return [sys.executable, "-m", f"runners.{kind}", str(spec_path)]
