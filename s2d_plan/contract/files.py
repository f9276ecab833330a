"""The stage spec file one attempt of a runner reads, the output names, and the
``COMPLETE`` marker written last."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from s2d_plan.contract.params import _Frozen
from s2d_plan.contract.stage import Stage, StageData
from s2d_plan.errors import ConfigurationError

COMPLETE_MARKER = "COMPLETE"  # written last, after the output directory is in place
MODEL_SUBDIR = "model"  # a training stage's checkpoint (Hugging Face format)
ROLLOUTS_FILE = "rollouts.jsonl"  # a rollout stage's dataset
EVIDENCE_FILE = "evidence.jsonl"  # a probe stage's per-prompt solve counts


# ---------------------------------------------------------------- the spec file and outputs


# What a plan's `tracking.report_to` may name, and the package each needs (TRL's
# `report_to` takes these names; the history stays the source of truth).
TRACKERS = {"trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


class Tracking(_Frozen):
    """Experiment trackers the training runners also log to (pass-through to TRL)."""

    report_to: tuple[Literal["trackio", "wandb", "mlflow", "tensorboard"], ...] = ()
    project: str | None = None  # the tracker's project (trackio, wandb); the compiler sets the plan's name


class StageSpec(_Frozen):
    """What the executor hands one attempt of a runner (``SPEC.json``).

    ``inputs`` holds every reference resolved: a model name or path passes through,
    ``@stage`` becomes that stage's output directory. The runner works in ``work_dir``
    (the same path on every attempt, so a resumable runner continues there) and calls
    ``finalize``; metrics are JSON lines appended to ``metrics_path``."""

    run_id: str = Field(max_length=128)
    attempt: int = Field(ge=1, le=2**31 - 1)
    stage: Stage
    inputs: dict[str, str] = Field(default_factory=dict)
    output_dir: Path
    work_dir: Path
    metrics_path: Path
    device: Literal["auto", "cuda", "cpu"] = "auto"
    cache_key: str = ""
    # trackers, not params: a stage logged to W&B is the same stage (its cache key ignores this)
    tracking: Tracking | None = None

    @property
    def tracker_run_name(self) -> str:
        """The name a tracker shows for this attempt: run id and stage id."""
        return f"{self.run_id}/{self.stage_id}"

    @property
    def params(self) -> Any:
        return self.stage.params

    @property
    def data(self) -> StageData:
        return self.stage.data

    @property
    def stage_id(self) -> str:
        return self.stage.id


def load_spec(path: str | Path) -> StageSpec:
    """The spec file of one attempt; ConfigurationError listing every problem."""
    try:
        return StageSpec.model_validate(json.loads(Path(path).read_text()))
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in validation_problems(exc)]
        raise ConfigurationError(f"stage spec {path}:\n  " + "\n  ".join(lines)) from None


def validation_problems(exc: ValidationError) -> list[tuple[tuple, str]]:
    """(location, message) of every error, without pydantic's boilerplate."""
    return [(tuple(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def write_spec(spec: StageSpec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(indent=1, exclude_none=True))


def finalize(spec: StageSpec, summary: dict[str, Any] | None = None) -> Path:
    """Move the finished work directory into place, then mark it complete."""
    work, out = spec.work_dir, spec.output_dir
    if out.exists():
        if is_complete(out):
            raise RuntimeError(f"{out} is already complete; refusing to overwrite it")
        shutil.rmtree(out)  # renamed into place right before a crash, never marked
    os.replace(work, out)
    marker = {"stage": spec.stage_id, "run_id": spec.run_id, "attempt": spec.attempt,
              "time": time.time(), "summary": summary or {}}
    tmp = out / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, out / COMPLETE_MARKER)
    return out


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).exists()


CALLER_CWD_ENV = "S2D_CALLER_CWD"  # where `execute` ran; a stage runs in its own run folder


def caller_path(ref: str) -> str:
    """A relative path in a graph (a model, a data source) as it was meant: relative to
    the directory ``execute`` ran in, not to the stage's own working directory; an
    absolute path, a hub id or a path that exists nowhere passes through.

        >>> caller_path("/abs/x.jsonl"), caller_path("org/name")
        ('/abs/x.jsonl', 'org/name')
    """
    base = os.environ.get(CALLER_CWD_ENV)
    if not ref or not base or os.path.isabs(ref) or ref.startswith("~"):
        return ref
    there = Path(base) / ref
    return str(there) if there.exists() else ref
