"""The choice among the best allocation of each structure, made on predictive distributions.

- ``with_predictive``: each candidate's predictive median, 80% interval and mean, the
  probability that it measures highest of all candidates and that it beats direct GRPO
  (paired draws: one posterior draw and one draw of each model's accuracy serve every
  candidate, so the comparisons are not diluted by uncertainty they share).
- ``simplest_within_noise``: the highest expected accuracy wins, except that a candidate
  whose extra stages add less than one run's noise (``STAGE_NOISE``) gives way to the
  simpler candidate made of a subset of its stages: a stage predicted to add less than
  its noise is not planned, and labels are not spent on a stage that does not pay.
- ``sensitivity``: which constants the pick depends on. Each constant is moved, alone, to
  the ends of its range (its prior's 95% range when it is assumed and the evidence has
  not narrowed it, else its posterior 80% range) and the choice is redone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from s2d_plan.allocate.space import Allocation, Context, Structure, pipeline
from s2d_plan.predict.posterior import predictive, summarize
from s2d_plan.predict.priors import PRIORS, SEED_SD

STAGE_NOISE = SEED_SD  # a stage must add more than one run's seed noise to be planned
NARROWED = 0.5  # posterior sd below this share of the prior sd: the evidence backs the constant


def stages_of(s: Structure) -> frozenset[tuple[str, str]]:
    """The training stages of a structure, each with the teacher it involves."""
    t = s.teacher or ""
    out = set()
    if s.teacher_rl:
        out.add(("teacher_grpo", t))
    for part in (s.bridge or "").split("+"):
        if part:
            out.add((part, t))
    if s.stage3 or s.direct:
        out.add(("student_grpo", ""))
    return frozenset(out)


def with_predictive(ctx: Context, finals: list[Allocation]) -> list[Allocation]:
    """The candidates with their predictive summaries, highest expected accuracy first."""
    pipes = [pipeline(ctx, a.structure, a.quantities, a.costs) for a in finals]
    draws = predictive(ctx.post, ctx.student, ctx.rates, pipes)
    st = summarize(draws)
    best = np.bincount(draws.argmax(axis=1), minlength=len(finals)) / len(draws)
    d = next((j for j, a in enumerate(finals) if a.structure.direct), None)
    out = []
    for j, a in enumerate(finals):
        beats = None if d is None or d == j else float(np.mean(draws[:, j] > draws[:, d]))
        out.append(replace(a, prediction=replace(
            a.prediction, value=float(st["median"][j]), low=float(st["low"][j]), high=float(st["high"][j]),
            median=float(st["median"][j]), mean=float(st["mean"][j]), p_best=float(best[j]), p_beats_direct=beats)))
    return sorted(out, key=lambda a: -(a.prediction.mean or a.prediction.value))


def _pick(values: list[float], sets: list[frozenset]) -> tuple[int, int | None]:
    """(index chosen, index of the richer top candidate it displaced or None)."""
    top = max(range(len(values)), key=lambda j: values[j])
    simpler = [j for j in range(len(values)) if sets[j] < sets[top] and values[j] >= values[top] - STAGE_NOISE]
    if not simpler:
        return top, None
    j = min(simpler, key=lambda j: (len(sets[j]), -values[j]))
    return j, top


def simplest_within_noise(finals: list[Allocation]) -> tuple[Allocation, dict[str, Any] | None]:
    """The pick, and what was set aside for it (None when the top candidate stands)."""
    values = [a.prediction.mean or a.prediction.value for a in finals]
    j, top = _pick(values, [stages_of(a.structure) for a in finals])
    if top is None:
        return finals[j], None
    return finals[j], {"structure": finals[top].structure.label, "mean": values[top], "pick_mean": values[j],
                       "extra_points": (values[top] - values[j]) * 100, "noise_points": STAGE_NOISE * 100}


def sensitivity(ctx: Context, finals: list[Allocation], top: int = 5, draws: int = 12) -> list[dict[str, Any]]:
    """Constants whose range moves the choice or the pick's margin, most influential first.
    Each end of a constant's range is scored as the expected accuracy over a few posterior
    draws of the other constants (paired across candidates and ends)."""
    cands = finals[:top]
    if len(cands) < 2:
        return []
    sets = [stages_of(a.structure) for a in cands]
    pipes = [pipeline(ctx, a.structure, a.quantities, a.costs) for a in cands]
    post = ctx.post
    pick = cands[0].structure.label
    rows = []
    for name in post.names:
        prior = PRIORS[name]
        backed = post.narrowed(name) < NARROWED
        lo, hi = post.interval(name) if (backed or not prior.assumed) else (prior.lo, prior.hi)
        flips, gaps = None, []
        for v in (lo, hi):
            vals = list(predictive(post, ctx.student, ctx.rates, pipes, n=draws, fix={name: v},
                                   inputs=False).mean(axis=0))
            j, _ = _pick(vals, sets)
            gaps.append((vals[0] - max(vals[1:])) * 100)
            if cands[j].structure.label != pick and flips is None:
                flips = {"to": cands[j].structure.label, "at": v}
        rows.append({"constant": name, "assumed": prior.assumed and not backed, "data_backed": backed,
                     "range": [lo, hi], "flips": flips, "margin_points": [min(gaps), max(gaps)],
                     "source": prior.source})
    rows.sort(key=lambda r: (r["flips"] is None, -(r["margin_points"][1] - r["margin_points"][0])))
    return [r for r in rows if r["flips"] or r["margin_points"][1] - r["margin_points"][0] > 0.05][:6]


def full_bridge(ctx: Context, teacher: str) -> tuple[dict[str, float], float]:
    """A full-size raw bridge from ``teacher`` (one pass over the prompt pool): its
    predictive summary and the probability it beats leaving the student as it is. Shown
    when the pick is to do nothing, so that the choice is visible, not implied."""
    from s2d_plan.allocate.space import Quantities

    info = ctx.teachers[teacher][0]
    bridge = "fkl+opd" if info.shares_tokenizer(ctx.student) else "fkl"
    s = Structure(teacher, False, bridge, info.shares_tokenizer(ctx.student))
    q = Quantities(fkl_rollouts=float(ctx.pool), opd_rollouts=float(ctx.pool) if "opd" in bridge else 0.0)
    draws = predictive(ctx.post, ctx.student, ctx.rates, [pipeline(ctx, s, q), pipeline(ctx, Structure(), Quantities())])
    st = summarize(draws[:, :1])
    return {k: float(v[0]) for k, v in st.items()}, float((draws[:, 0] > draws[:, 1]).mean())
