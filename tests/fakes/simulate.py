"""A deterministic stand-in stage (kind ``simulate``) for the executor's tests and benchmarks.

A test fake, not a product kind: importing this module registers it (the test suite
names it in ``S2D_STAGE_PLUGINS``, so executors started in other processes know it too).

It follows the runner contract exactly like a training stage does, without a model:
it reads its resolved inputs, logs metrics step by step, checkpoints into its work
directory and resumes from there on a later attempt, and leaves a ``model/`` and a
``rollouts.jsonl`` so ``@stage`` references to it work as a policy or a dataset.

params (all optional):
    steps (10)             number of steps (step numbers 0 .. steps-1)
    sleep_s (0.0)          wall time per step
    fail_at_step (None)    raise RuntimeError when reaching this step ...
    fail_attempts (None)   ... only on attempts up to this number, or in this list (None: always)
    checkpoint_every (1)   save ``checkpoint.json`` every N steps; 0 disables resuming
    keys (["loss", "reward"])  metric keys logged each step
    extra_keys (0)         further keys m0..mN per step (to load the ingestion path)
    nan_at_step (None)     log NaN for every key at this step (stored as NULL)
    evidence (None)        {"model", "source", "prompts", "samples"}: write evidence.jsonl
                           the way a probe stage does

Every value is a function of (stage id, step, key) only, so reruns log identical curves.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

from pydantic import Field

from runners.common import MetricWriter, run_main
from s2d_plan.contract import MODEL_SUBDIR, ROLLOUTS_FILE, Kind, Params, StageSpec, register_kind

CHECKPOINT = "checkpoint.json"


class SimulateParams(Params):
    steps: int = Field(default=10, ge=1, le=10_000_000)
    sleep_s: float = Field(default=0.0, ge=0)
    fail_at_step: int | None = None
    fail_attempts: int | list[int] | None = None
    checkpoint_every: int = Field(default=1, ge=0)
    keys: list[str] = ["loss", "reward"]
    extra_keys: int = Field(default=0, ge=0)
    nan_at_step: int | None = None
    evidence: dict | None = None


register_kind(Kind("simulate", SimulateParams, "tests.fakes.simulate", model=True, dataset=True, resumable=True))


def value_at(stage_id: str, key: str, step: int) -> float:
    """The deterministic metric curve: a decaying loss with a reproducible wiggle."""
    phase = zlib.crc32(f"{stage_id}/{key}".encode()) % 1000 / 1000.0
    base = 1.0 / (1.0 + 0.1 * step)
    wiggle = 0.05 * math.sin(step + 6.283 * phase)
    return 1.0 - base + wiggle if key in ("reward", "accuracy") else base + wiggle


def _resume_step(work: Path) -> int:
    ckpt = work / CHECKPOINT
    if ckpt.exists():
        return int(json.loads(ckpt.read_text())["step"]) + 1
    return 0


def run(spec: StageSpec, metrics: MetricWriter) -> dict:
    p = spec.params
    steps, sleep_s, fail_at, fail_attempts = p.steps, p.sleep_s, p.fail_at_step, p.fail_attempts
    every = p.checkpoint_every
    keys = list(p.keys) + [f"m{i}" for i in range(p.extra_keys)]
    nan_at = p.nan_at_step
    work = spec.work_dir

    for name, ref in spec.inputs.items():  # a @stage input must be a completed output
        if Path(ref).is_absolute() and not (Path(ref) / "COMPLETE").exists():
            raise RuntimeError(f"input {name} = {ref} is not a completed stage output")
    start = _resume_step(work) if every > 0 else 0
    with open(work / "attempts.log", "a") as f:
        f.write(f"attempt {spec.attempt} starts at step {start}\n")
    print(f"simulate {spec.stage_id}: attempt {spec.attempt}, steps {start}..{steps - 1}", flush=True)

    for step in range(start, steps):
        if fail_at is not None and step == int(fail_at) and _fails_on(spec.attempt, fail_attempts):
            raise RuntimeError(f"simulated failure at step {step}")
        for key in keys:
            metrics.log(step, key, math.nan if step == nan_at else value_at(spec.stage_id, key, step))
        if every > 0 and (step + 1) % every == 0:
            tmp = work / (CHECKPOINT + ".tmp")
            tmp.write_text(json.dumps({"step": step}))
            tmp.replace(work / CHECKPOINT)
        if sleep_s:
            time.sleep(sleep_s)

    model = work / MODEL_SUBDIR
    model.mkdir(exist_ok=True)
    (model / "weights.json").write_text(json.dumps({"stage": spec.stage_id, "steps": steps, "inputs": spec.inputs}))
    with open(work / ROLLOUTS_FILE, "w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": f"{spec.stage_id} prompt {i}", "completion": str(i)}) + "\n")
    (work / "inputs.json").write_text(json.dumps(spec.inputs, sort_keys=True))
    (work / "device.json").write_text(json.dumps({"device": spec.device,
                                                  "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    evidence = p.evidence
    if evidence:
        _write_evidence(work, spec.stage_id, evidence)
    metrics.artifact("model", MODEL_SUBDIR)
    metrics.artifact("rollouts", ROLLOUTS_FILE)
    return {"steps": steps, "final_loss": value_at(spec.stage_id, "loss", steps - 1)}


def _fails_on(attempt: int, which) -> bool:
    if which is None:
        return True
    if isinstance(which, list):
        return attempt in which
    return attempt <= int(which)


def _write_evidence(work: Path, stage_id: str, ev: dict) -> None:
    samples = int(ev.get("samples", 8))
    with open(work / "evidence.jsonl", "w") as f:
        for i in range(int(ev.get("prompts", 4))):
            correct = zlib.crc32(f"{stage_id}/{i}".encode()) % (samples + 1)
            f.write(json.dumps({"model": ev["model"], "source": ev.get("source", "labeled"),
                                "prompt_index": i, "samples": samples, "correct": correct}) + "\n")


if __name__ == "__main__":
    run_main(run, sys.argv[1:], peak_memory=False)  # its metrics stay exactly the declared keys
