"""What every runner shares: reading its stage spec, reporting metrics, atomic outputs.

The runner contract (DESIGN.md): the executor starts ``python -m runners.<kind> SPEC.json``.
SPEC.json is::

    {"run_id": "...", "attempt": 1,
     "stage": {...the stage exactly as in the graph...},
     "inputs": {"policy": "...", "teacher": "...", "data.rollouts": "..."},
     "output_dir": "/abs/stages/<id>-<key>",     # final place; must not exist yet
     "work_dir": "/abs/stages/<id>-<key>.partial",  # stable across attempts: resume from here
     "metrics_path": "/abs/.../metrics.jsonl",
     "device": "auto"}

``inputs`` holds every reference already resolved: a model name or path passes through,
and ``@stage`` becomes that stage's output directory (see ``model_path`` and
``dataset_path`` for what lies inside one).

A runner writes everything into ``work_dir`` and calls ``finalize``: the directory is
renamed to ``output_dir`` and only then is the ``COMPLETE`` marker written, so a
half-written output is never taken as done. Metrics are JSON lines appended to
``metrics_path`` (``{"step", "key", "value", "time"}``), flushed line by line so the
executor can tail them live and nothing is lost when a stage dies. A failing runner exits
non-zero with the error on stderr (``run_main`` does this).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

COMPLETE_MARKER = "COMPLETE"
MODEL_SUBDIR = "model"  # a training stage saves its checkpoint (HF format) here
ROLLOUTS_FILE = "rollouts.jsonl"  # a rollout / probe stage writes its dataset here


@dataclass
class StageSpec:
    run_id: str
    attempt: int
    stage: dict[str, Any]
    inputs: dict[str, str]
    output_dir: Path
    work_dir: Path
    metrics_path: Path
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return self.stage.get("params", {})

    @property
    def data(self) -> dict[str, Any]:
        return self.stage.get("data", {})

    @property
    def stage_id(self) -> str:
        return self.stage["id"]


def load_spec(path: str | Path) -> StageSpec:
    raw = json.loads(Path(path).read_text())
    known = {"run_id", "attempt", "stage", "inputs", "output_dir", "work_dir", "metrics_path", "device"}
    return StageSpec(
        run_id=raw["run_id"],
        attempt=int(raw.get("attempt", 1)),
        stage=raw["stage"],
        inputs=dict(raw.get("inputs", {})),
        output_dir=Path(raw["output_dir"]),
        work_dir=Path(raw["work_dir"]),
        metrics_path=Path(raw["metrics_path"]),
        device=raw.get("device", "auto"),
        extra={k: v for k, v in raw.items() if k not in known},
    )


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


def finalize(spec: StageSpec, summary: dict[str, Any] | None = None) -> Path:
    """Move the finished work directory into place, then mark it complete."""
    work, out = spec.work_dir, spec.output_dir
    if out.exists():
        if (out / COMPLETE_MARKER).exists():
            raise RuntimeError(f"{out} is already complete; refusing to overwrite it")
        # a rename that happened right before a crash, without its marker: replace it
        import shutil

        shutil.rmtree(out)
    os.replace(work, out)
    marker = {"stage": spec.stage_id, "run_id": spec.run_id, "attempt": spec.attempt,
              "time": time.time(), "summary": summary or {}}
    tmp = out / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, out / COMPLETE_MARKER)
    return out


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).exists()


def model_path(ref: str) -> str:
    """A resolved policy/teacher input: a stage output holds its model in ``model/``;
    anything else (hub id, local checkpoint) is used as given."""
    p = Path(ref)
    if (p / MODEL_SUBDIR).is_dir():
        return str(p / MODEL_SUBDIR)
    return ref


def dataset_path(ref: str) -> Path:
    """A resolved dataset input: a stage output holds its rows in ``rollouts.jsonl``."""
    p = Path(ref)
    if (p / ROLLOUTS_FILE).is_file():
        return p / ROLLOUTS_FILE
    return p


class NullWriter(MetricWriter):
    """What ranks other than 0 get under ``accelerate launch``: only rank 0 reports."""

    def __init__(self):  # noqa: D107  (no file)
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


def run_main(run: Callable[[StageSpec, MetricWriter], dict[str, Any] | None], argv: list[str] | None = None) -> None:
    """Entry point shared by every runner: ``python -m runners.<kind> SPEC.json``.

    ``run`` does the work inside ``spec.work_dir`` and returns a summary; this wrapper
    finalizes the output and turns any exception into stderr + exit status 1. Under
    several processes every rank runs ``run``; only rank 0 writes metrics and finalizes.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m runners.<kind> STAGE_SPEC.json (got {argv})", file=sys.stderr)
        sys.exit(2)
    spec = load_spec(argv[0])
    spec.work_dir.mkdir(parents=True, exist_ok=True)
    main = process_rank() == 0
    writer = MetricWriter(spec.metrics_path) if main else NullWriter()
    try:
        summary = run(spec, writer)
        if main:
            finalize(spec, summary)
    except KeyboardInterrupt:
        print(f"stage {spec.stage_id}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # the executor records stderr's tail as the stage's error
        from s2d_plan.errors import S2DError

        if not isinstance(exc, S2DError):  # a user error is its message; a bug keeps its traceback
            traceback.print_exc(file=sys.stderr)
        print(f"stage {spec.stage_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        writer.close()
