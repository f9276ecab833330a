"""Where s2d-plan keeps things on disk (one "home" directory per project).

The home is ``--home``, else the environment variable ``S2D_HOME``, else ``./.s2d`` in
the current directory. Inside it::

    history.duckdb                 the run history (only `execute` writes it)
    history.snapshot.duckdb        a copy the executor publishes every few seconds while
                                   it runs; readers use it when the main file is locked
    stages/<stage_id>-<key>/       a completed stage output (holds a COMPLETE marker)
    stages/<stage_id>-<key>.partial/  the same stage while it runs (resumable work dir)
    runs/<run_id>/                 per-attempt files: <stage>.<attempt>.spec.json,
                                   .log (stdout+stderr) and .metrics.jsonl

    >>> stage_dir(Path("/h"), "teacher_grpo", "3f2a")
    PosixPath('/h/stages/teacher_grpo-3f2a')
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "S2D_HOME"
DEFAULT_HOME = ".s2d"


def resolve_home(home: str | Path | None = None) -> Path:
    """The home directory as an absolute path (it need not exist yet)."""
    if home is None or str(home) == "":
        home = os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(home).expanduser().absolute()


def db_path(home: Path) -> Path:
    return home / "history.duckdb"


def snapshot_path(home: Path) -> Path:
    return home / "history.snapshot.duckdb"


def stage_dir(home: Path, stage_id: str, cache_key: str) -> Path:
    return home / "stages" / f"{stage_id}-{cache_key}"


def partial_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".partial")


def run_dir(home: Path, run_id: str) -> Path:
    return home / "runs" / run_id


def attempt_file(home: Path, run_id: str, stage_id: str, attempt: int, suffix: str) -> Path:
    """e.g. attempt_file(h, r, "a", 2, "log") -> h/runs/r/a.2.log"""
    return run_dir(home, run_id) / f"{stage_id}.{attempt}.{suffix}"
