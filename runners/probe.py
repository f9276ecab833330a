"""Probe stage: per-prompt solve rates of a model on a sample of the labeled prompts.

    python -m runners.probe STAGE.json

GRPO learns only from prompts whose G samples disagree; a prompt solved with probability
p gives signal with probability 1 - p^G - (1-p)^G. The probe measures that directly: it
samples ``samples_per_prompt`` completions on ``num_prompts`` prompts drawn (under
``seed``) from ``data.labeled`` (a ``spend: false`` slice: nothing is trained on them)
and writes ``evidence.jsonl``::

    {"model", "source", "prompt_index", "samples", "correct"}

which the executor loads into the ``evidence`` table. Metrics: ``probe/solve_rate`` and
``probe/signal_yield@8`` (unbiased per prompt when samples >= 8: the chance that 8 of
the samples drawn without replacement all agree is C(c,8)/C(m,8) + C(m-c,8)/C(m,8)).
"""

from __future__ import annotations

import json
import random
from math import comb

from runners import _train
from runners._sample import sample
from runners.common import MetricWriter, StageSpec, model_path, run_main
from runners.data import load_labeled
from s2d_plan.contract import EVIDENCE_FILE, ROLLOUTS_FILE, ConfigurationError


def prompt_signal_yield(correct: int, samples: int, group: int = 8) -> float:
    """Chance that a group of ``group`` samples of this prompt has mixed outcomes, estimated
    from ``correct`` of ``samples`` (unbiased when samples >= group: drawing without
    replacement); the planner's version is the expectation over a Beta of solve rates."""
    if samples >= group:
        same = (comb(correct, group) + comb(samples - correct, group)) / comb(samples, group)
        return 1.0 - same
    rate = correct / samples if samples else 0.0
    return 1.0 - rate ** group - (1.0 - rate) ** group


def run(spec: StageSpec, writer: MetricWriter) -> dict:
    p = spec.params
    device = _train.device_of(spec)
    if spec.data.labeled is None:
        raise ConfigurationError("probe: the stage needs data.labeled (with spend: false)")
    from runners.verifier import shared_verifier

    verifier = shared_verifier()
    rows = load_labeled(spec.data.labeled)
    rng = random.Random(int(p.seed))
    if len(rows) > int(p.num_prompts):
        rows = sorted(rng.sample(rows, int(p.num_prompts)), key=lambda r: r["index"])
    m = int(p.samples_per_prompt)
    samples = sample(model_path(spec.inputs["policy"]), [r["problem"] for r in rows], m, int(p.max_new_tokens),
                     float(p.temperature), int(p.seed), device, int(p.batch_size), p.vllm)
    verdicts = verifier.score_many([rows[s.problem_index]["answer"] for s in samples], [s.text for s in samples])
    correct = [0] * len(rows)
    for s, v in zip(samples, verdicts):
        correct[s.problem_index] += int(v.score > 0.5)
    model, source = spec.stage.policy, spec.data.labeled.source
    with open(spec.work_dir / EVIDENCE_FILE, "w", encoding="utf-8") as f:
        for r, c in zip(rows, correct):
            f.write(json.dumps({"model": model, "source": source, "prompt_index": r["index"], "samples": m,
                                "correct": c}) + "\n")
    with open(spec.work_dir / ROLLOUTS_FILE, "w", encoding="utf-8") as f:
        for s, v in zip(samples, verdicts):
            r = rows[s.problem_index]
            f.write(json.dumps({"index": r["index"], "sample": s.sample, "text": s.text, "answer": r["answer"],
                                "score": v.score, "status": v.status}, ensure_ascii=False) + "\n")
    n = max(1, len(rows))
    solve = sum(c / m for c in correct) / n
    yield8 = sum(prompt_signal_yield(c, m) for c in correct) / n
    writer.log(0, "probe/solve_rate", solve)
    writer.log(0, "probe/signal_yield@8", yield8)
    from runners.verifier import batch_metrics

    for key, value in batch_metrics(verdicts).items():
        writer.log(0, key, value)
    writer.artifact("evidence", EVIDENCE_FILE)
    return {"model": model, "prompts": len(rows), "solve_rate": solve, "signal_yield@8": yield8}


if __name__ == "__main__":
    run_main(run)
