"""Is the outcome posterior's uncertainty honest? Leave-one-out coverage and error.

    .venv/bin/python -m benchmarks.calibration_bench [--quick]

For each datum: refit the posterior without it, predict it (predictive median and 80%
interval of what one run would measure), and check the measured value against them.
Printed: the coverage of the 80% intervals (goal 70-90%) and the RMSE of the medians,
in sample (fit on everything) and out of sample (leave one out), over

1. the paper's eight MATH-500 numbers (Xu et al. 2026), with the paper's evidence only;
2. the tinyworld arms of ``benchmarks/results/tinyworld-d1.json`` (an earlier run of
   ``benchmarks.tinyworld``: each arm's mean over its seeds, its pipeline rebuilt from
   the benchmark's own ``Arms``), with the paper's numbers plus the other arms as
   evidence (leave one arm out), and once with the paper alone (do the constants
   transfer to a different world without its data?).

Nothing here is tuned toward a coverage: the priors, noise levels and sampler settings
are the shipped ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from s2d_plan.plan.registry import ModelInfo
from s2d_plan.predict.outcome import Pipeline, SolveRates
from s2d_plan.predict.posterior import Datum, eval_sd, fit, paper_evidence, predictive, summarize

ROOT = Path(__file__).resolve().parents[1]

# tinyworld d1 (tinyworld/build.py SHAPES: Qwen3 layers x hidden, vocab 384, tied
# embeddings): ~15 h^2 per layer plus the embedding; base accuracies from the run's header
# ("world d1: student base 52.9%, teacher base 63.1%", benchmarks/results/tinyworld-d1.md).
TW_STUDENT = ModelInfo(name="tinyworld/student", params_b=2 * 15 * 64 ** 2 / 1e9 + 384 * 64 / 1e9, layers=2,
                       hidden=64, heads=4, kv_heads=2, vocab=384, tokenizer="tinyworld-digits", context=256)
TW_TEACHER = ModelInfo(name="tinyworld/teacher", params_b=4 * 15 * 128 ** 2 / 1e9 + 384 * 128 / 1e9, layers=4,
                       hidden=128, heads=4, kv_heads=2, vocab=384, tokenizer="tinyworld-digits", context=256)
TW_RATES = (SolveRates(0.529, source="tinyworld build (held-out avg@k)"),
            SolveRates(0.631, source="tinyworld build (held-out avg@k)"))
TW_EVAL = 500


def tinyworld_evidence() -> list[Datum]:
    spec = importlib.util.spec_from_file_location("tw_bench", ROOT / "benchmarks" / "tinyworld.py")
    tw = importlib.util.module_from_spec(spec)
    sys.modules["tw_bench"] = tw  # dataclasses look their module up while the class is made
    spec.loader.exec_module(tw)
    results = json.loads((ROOT / "benchmarks/results/tinyworld-d1.json").read_text())
    sz = tw.Sizes(max_new=16 + 48 * 1)
    arms = tw.Arms(Path("/nonexistent"), sz, seed=0).all()
    out = []
    for arm, seeds in sorted(results["per_seed"].items()):
        q = (arms.get(arm) or (None, {"pipeline": None}))[1]["pipeline"]
        if q is None:
            continue  # references (teacher, teacher-rl) and the allocator's own arms (h-*)
        q = dict(q)
        use_teacher = q.pop("teacher", False)
        pipe = Pipeline(teacher=TW_TEACHER if use_teacher else None, teacher_rates=TW_RATES[1] if use_teacher else None,
                        group_size=sz.group, pool=sz.rollouts + sz.opd_prompts, **q)
        measured = float(np.mean(list(seeds.values())))
        sd = eval_sd(measured, TW_EVAL) / math.sqrt(len(seeds))  # a mean over seeds
        out.append(Datum(f"tinyworld {arm}", TW_STUDENT, TW_RATES[0], pipe, measured, sd, "tinyworld-d1.json"))
    return out


def predict_one(post, d: Datum) -> tuple[float, float, float]:
    s = summarize(predictive(post, d.student, d.rates, [d.pipeline]))
    return float(s["median"][0]), float(s["low"][0]), float(s["high"][0])


def report(title: str, rows: list[tuple[str, float, float, float, float]]) -> dict:
    covered = [lo <= y <= hi for _, y, _, lo, hi in rows]
    err = [m - y for _, y, m, _, _ in rows]
    print(f"\n{title}")
    for (name, y, m, lo, hi), ok in zip(rows, covered):
        print(f"  {name:42s} measured {y * 100:5.1f}  median {m * 100:5.1f}  80% [{lo * 100:5.1f}, {hi * 100:5.1f}]"
              f"{'' if ok else '  MISS'}")
    cov = sum(covered) / len(rows)
    rmse = math.sqrt(sum(e * e for e in err) / len(err))
    print(f"  coverage of the 80% intervals: {sum(covered)}/{len(rows)} = {cov:.0%}  [goal 70-90%];"
          f"  RMSE of the medians: {rmse * 100:.2f} points")
    return {"coverage": cov, "rmse": rmse, "n": len(rows)}


def in_sample(evidence: list[Datum], targets: list[Datum]):
    post = fit(evidence)
    return [(d.name, d.measured, *predict_one(post, d)) for d in targets], post


def leave_one_out(base: list[Datum], held: list[Datum]):
    rows = []
    for i, d in enumerate(held):
        post = fit(base + held[:i] + held[i + 1:])
        rows.append((d.name, d.measured, *predict_one(post, d)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the paper's numbers only")
    a = ap.parse_args(argv)
    t0 = time.time()
    paper = paper_evidence()
    rows, post = in_sample(paper, paper)
    summary = {"paper in sample": report("(1) the paper's numbers, in sample (posterior on all eight)", rows)}
    print(f"  posterior: {post.info['sampler']}; sigma_model {post.sigma_model * 100:.2f} points")
    summary["paper LOO"] = report("(1) the paper's numbers, leave one out", leave_one_out([], paper))
    if not a.quick:
        tw = tinyworld_evidence()
        rows, post = in_sample(paper, tw)
        summary["tinyworld, paper only"] = report(
            "(2) tinyworld arms predicted from the paper's evidence alone (transfer, no tinyworld data)", rows)
        rows, post = in_sample(paper + tw, tw)
        summary["tinyworld in sample"] = report("(2) tinyworld arms, in sample (paper + every arm)", rows)
        print(f"  posterior: sigma_model {post.sigma_model * 100:.2f} points")
        summary["tinyworld LOO"] = report("(2) tinyworld arms, leave one arm out (paper + the other arms)",
                                          leave_one_out(paper, tw))
    print(f"\nsummary ({time.time() - t0:.0f} s):")
    for k, v in summary.items():
        print(f"  {k:26s} coverage {v['coverage']:4.0%} of {v['n']:2d}   RMSE {v['rmse'] * 100:5.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
