"""What every runner shares: the entry point, metric lines, and reading stage outputs.

The contract itself (the spec file, typed params per kind, output names, the COMPLETE
marker) is ``s2d_plan.contract``, the one planner module runners import. The executor
starts ``python -m runners.<kind> SPEC.json``; ``run_main`` loads the spec, runs the
stage in ``work_dir``, and ``finalize`` renames the work directory into place before the
marker is written, so a half-written output is never taken as done. Metrics are JSON
lines appended to ``metrics_path`` (``{"step", "key", "value", "time"}``), flushed line
by line so the executor can tail them live and nothing is lost when a stage dies. A
failing runner exits non-zero with the error on stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2d_plan.contract import MODEL_SUBDIR, ROLLOUTS_FILE, S2DError, StageSpec, finalize, load_spec
from s2d_plan.contract.files import caller_path


class MetricWriter:
    """Append metric lines to the stage's stream; every line is flushed at once."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", buffering=1, encoding="utf-8")

    def log(self, step: int, key: str, value: float) -> None:
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            value_out: float | None = None  # JSON has no NaN; the executor stores NULL
        else:
            value_out = value
        self._f.write(json.dumps({"step": int(step), "key": key, "value": value_out, "time": time.time()}) + "\n")

    def log_many(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.log(step, key, value)

    def artifact(self, name: str, relpath: str) -> None:
        """Announce an output (relative to the output directory) for the artifacts table."""
        self._f.write(json.dumps({"artifact": name, "path": relpath, "time": time.time()}) + "\n")

    def close(self) -> None:
        self._f.close()


def model_path(ref: str) -> str:
    """A resolved policy/teacher input: a stage output holds its model in ``model/``;
    anything else (hub id, local checkpoint) is used as given (a relative path from
    where ``execute`` ran, since a stage runs in its own folder)."""
    ref = caller_path(ref)
    p = Path(ref)
    if (p / MODEL_SUBDIR).is_dir():
        return str(p / MODEL_SUBDIR)
    return ref


def dataset_path(ref: str) -> Path:
    """A resolved dataset input: a stage output holds its rows in ``rollouts.jsonl``."""
    p = Path(caller_path(ref))
    if (p / ROLLOUTS_FILE).is_file():
        return p / ROLLOUTS_FILE
    return p


class NullWriter(MetricWriter):
    """What ranks other than 0 get under ``accelerate launch``: only rank 0 reports."""

    def __init__(self):  # no file
        pass

    def log(self, step: int, key: str, value: float) -> None:
        pass

    def artifact(self, name: str, relpath: str) -> None:
        pass

    def close(self) -> None:
        pass


def process_rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


PEAK_MEM_KEY = "sys/peak_mem_gb"


def peak_memory_gb() -> float | None:
    """Peak memory of this process: CUDA memory allocated by torch where a GPU was used,
    else the process's peak resident set (CPU)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 1e9
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1e9 if sys.platform == "darwin" else 1e6)  # bytes on macOS, KiB on Linux
    except Exception:  # a number for the report, never a reason to fail a stage
        return None


def run_main(run: Callable[[StageSpec, MetricWriter], dict[str, Any] | None], argv: list[str] | None = None,
             peak_memory: bool = True) -> None:
    """Entry point shared by every runner: ``python -m runners.<kind> SPEC.json``.

    ``run`` does the work inside ``spec.work_dir`` and returns a summary; this wrapper
    finalizes the output and turns any exception into stderr + exit status 1. Under
    several processes every rank runs ``run``; only rank 0 writes metrics and finalizes.
    ``peak_memory``: log the process's peak memory (``sys/peak_mem_gb``) when it succeeds.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m runners.<kind> STAGE_SPEC.json (got {argv})", file=sys.stderr)
        sys.exit(2)
    try:
        spec = load_spec(argv[0])
    except (OSError, ValueError) as exc:  # ConfigurationError is a ValueError
        print(f"cannot run: {exc}", file=sys.stderr)
        sys.exit(2)
    spec.work_dir.mkdir(parents=True, exist_ok=True)
    main = process_rank() == 0
    writer = MetricWriter(spec.metrics_path) if main else NullWriter()
    try:
        summary = run(spec, writer)
        peak = peak_memory_gb() if peak_memory else None
        if peak is not None:  # the report sets it beside the cost model's estimate
            writer.log(0, PEAK_MEM_KEY, peak)
        if main:
            finalize(spec, summary)
    except KeyboardInterrupt:
        print(f"stage {spec.stage_id}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # the executor records stderr's tail as the stage's error
        if not isinstance(exc, S2DError):  # a user error is its message; a bug keeps its traceback
            traceback.print_exc(file=sys.stderr)
        print(f"stage {spec.stage_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        writer.close()
