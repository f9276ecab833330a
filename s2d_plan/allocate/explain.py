"""Why the allocator chose what it chose: plain-words reasons tied to the reward-density
principle, and the graph's ``meta`` block (alternatives, rationale, the inputs of the
prediction that ``calibrate`` refits against). Pure: no I/O, no printing.
"""

from __future__ import annotations

from typing import Any

from s2d_plan.allocate.allocator import Allocation, Context, SearchResult
from s2d_plan.allocate.space import MAX_EPOCHS, MAX_PASSES, pipeline
from s2d_plan.predict.calibrate import outcome_inputs
from s2d_plan.predict.outcome import rl_gain, signal_yield


# ---------------------------------------------------------------- explanation


def graph_meta(ctx: Context, r: SearchResult) -> dict[str, Any]:
    """What a compiled graph keeps about its choice (``graph.meta``)."""
    def row(a: Allocation) -> dict[str, Any]:
        p = a.prediction
        return {"structure": a.structure.label, "value": round(p.value, 4), "low": round(p.low, 4),
                "high": round(p.high, 4), "gpu_hours": round(a.gpu_hours, 3), "quantities": a.quantities.params()}

    rates = {ctx.spec.student.model: ctx.rates, **{k: v[1] for k, v in ctx.teachers.items()}}
    return {"structure": r.best.structure.label, "quantities": r.best.quantities.params(),
            "rationale": rationale(ctx, r), "alternatives": [row(a) for a in r.alternatives],
            "baseline": row(r.baseline) if r.baseline else None, "infeasible": r.infeasible, "notes": r.notes,
            "solve_rates": {k: {"mean": round(v.mean, 4), "kappa": v.kappa, "source": v.source} for k, v in rates.items()},
            "budget_gpu_hours": ctx.budget, "search": r.search, "trials": r.trials,
            "outcome_inputs": _outcome_inputs(ctx, r.best),  # what `calibrate` refits against
            # the plan itself, so `validate GRAPH.json` can check the rules without it
            "plan_spec": {"spec": ctx.spec.model_dump(mode="json"), "base_dir": str(ctx.spec.base_dir)}}


def _outcome_inputs(ctx: Context, a: Allocation) -> dict[str, Any]:
    return outcome_inputs(ctx.student, ctx.rates, pipeline(ctx, a.structure, a.quantities, a.costs))


def _short(name: str) -> str:
    return name.split("/")[-1]


def rationale(ctx: Context, r: SearchResult) -> list[str]:
    """Plain-words reasons, each tied to the reward-density principle."""
    s = r.best.structure
    out = _teacher_reasons(ctx, r) + _bridge_reasons(ctx, r) + _student_reasons(ctx, r)
    if r.best.gpu_hours < 0.5 * ctx.budget and (s.teacher or s.direct):
        out.append(f"Only {r.best.gpu_hours:.3g} of {ctx.budget:.3g} GPU-hours are planned: past this point every "
                   f"stage is at its search bound ({MAX_EPOCHS:g} epochs, {MAX_PASSES:g} passes over the prompts) or "
                   "saturated, so labels, not compute, are the binding budget.")
    if s.probe:
        out.append("A probe first measures the student's per-prompt solve rates on the labels: the top choices are "
                   "within the prediction band, and its evidence sharpens the next recommend.")
    for model, rates in [(ctx.spec.student.model, ctx.rates)] + [(k, v[1]) for k, v in ctx.teachers.items()]:
        if rates.estimated:
            out.append(f"{_short(model)} has no published {ctx.spec.objective.eval} figure: {rates.mean:.1%} is "
                       f"{rates.source}; the band is widened.")
        elif rates.source.startswith("probe"):
            out.append(f"{_short(model)}'s solve rates come from a probe in the history ({rates.source}), "
                       "not the registry prior.")
    return out + r.notes


def _teacher_reasons(ctx: Context, r: SearchResult) -> list[str]:
    s, q, parts = r.best.structure, r.best.quantities, r.best.prediction.parts
    g = q.group_size
    if s.teacher and s.teacher_rl:
        tr = ctx.teachers[s.teacher][1]
        yt, ys = signal_yield(tr.mean, tr.kappa, g), signal_yield(ctx.rates.mean, ctx.rates.kappa, g)
        lift = f"{tr.mean:.1%} -> {parts.get('teacher', tr.mean):.1%}"
        head = f"Labels go to {_short(s.teacher)} first ({q.teacher_labels:,} of {ctx.labels:,}, GRPO with G={g}): "
        if yt >= ys:
            body = (f"it gets signal (a group of {g} with mixed outcomes) from {yt:.0%} of prompts vs {ys:.0%} for "
                    f"the student, and RL is predicted to lift it {lift}")
        else:
            body = (f"fewer of its groups of {g} are mixed ({yt:.0%} of prompts vs {ys:.0%} for the student), but "
                    f"each signal-bearing label moves a stronger model further: predicted {lift}")
        return [head + body + "; sparse reward goes where exploration is productive, and the bridge carries "
                "the result to the student densely."]
    if s.teacher:
        why = "the plan has no labels" if ctx.labels == 0 else "GRPO on it does not fit or does not pay"
        return [f"{_short(s.teacher)} is used raw ({why}): a teacher that RL has not reward-shaped is a weaker "
                "dense reward (the paper's raw-teacher ablation: -7.8 MATH points)."]
    return []


def _bridge_reasons(ctx: Context, r: SearchResult) -> list[str]:
    best, s = r.best, r.best.structure
    if not s.teacher:
        return []
    name = {"fkl+opd": "forward-KL warmup on teacher rollouts, then on-policy distillation",
            "opd": "on-policy distillation", "fkl": "forward-KL on teacher rollouts"}[s.bridge]
    if s.bridge == "fkl" and not s.fkl_token:
        name = f"sequence-level forward-KL on {_short(s.teacher)}'s text (no token-level transfer fits or applies)"
    out = [f"Dense transfer to the student by {name}: predicted {ctx.rates.mean:.1%} -> "
           f"{best.prediction.parts.get('bridged', ctx.rates.mean):.1%} before any student RL."]
    others = {a.structure.bridge: a for a in r.alternatives
              if a.structure.teacher == s.teacher and a.structure.teacher_rl == s.teacher_rl
              and a.structure.stage3 == s.stage3}
    reasons = {"opd": ("OPD without the warmup", "the warmup brings the student close to the teacher (C2), "
                       "so OPD's per-token reward is informative"),
               "fkl": ("FKL without OPD", "OPD corrects the student on its own rollouts with a dense "
                       "per-token reward")}
    for bridge, (label, why) in reasons.items():
        if s.bridge == "fkl+opd" and bridge in others:
            d = (best.prediction.value - others[bridge].prediction.value) * 100
            out.append(f"{label} would be {d:.1f} points lower: {why}.")
    return out


def _student_reasons(ctx: Context, r: SearchResult) -> list[str]:
    best, s, q = r.best, r.best.structure, r.best.quantities
    out = []
    if s.stage3:
        after = best.prediction.value - best.prediction.parts.get("bridged", ctx.rates.mean)
        cold = rl_gain(ctx.rates.mean, ctx.rates.kappa, ctx.student.params_b, q.student_labels, q.student_epochs,
                       q.group_size, k=ctx.k)[0]
        which = ("All" if not s.teacher_rl else "The other" if not ctx.reuse
                 else "All (reused, as the plan allows)")
        why = ("the bridged student is ready for sparse reward" if after > cold else
               "a usable teacher exists, so student GRPO waits for a bridge; with an unshaped teacher that "
               "bridge is kept minimal, since its dense reward is predicted to hurt")
        out.append(f"{which} {q.student_labels:,} labels go to Stage 3 GRPO after the bridge, adding a predicted "
                   f"{after * 100:+.1f} points, vs {cold * 100:+.1f} for the same labels on the cold student: {why}.")
    if s.direct:
        why = ("no teacher is listed" if not ctx.teachers else
               "no listed teacher can be used (see below)" if ctx.spec.pins.teacher != "none" else
               "the plan pins teacher: none")
        ys = signal_yield(ctx.rates.mean, ctx.rates.kappa, q.group_size)
        out.append(f"Labels go to GRPO on the student because {why}: a group of {q.group_size} has mixed "
                   f"outcomes on {ys:.0%} of its prompts.")
    if s.teacher is None and not s.direct:
        out.append("With no labels there is no GRPO anywhere; distillation from an unshaped (raw) teacher is not "
                   "predicted to beat the student as it is (the paper: raw-teacher transfer underperforms), so the "
                   "plan only evaluates the student." if ctx.labels == 0 else
                   "No training is predicted to improve the student within the budget; the plan only evaluates it.")
    if r.baseline:
        b = r.baseline.prediction
        tail = (" It is not an option here: a usable teacher exists, so labels never go to the cold student."
                if s.teacher or any(a.structure.teacher for a in r.alternatives) else "")
        out.append(f"Direct GRPO on the student (the usual practice) is predicted at {b.value:.1%} "
                   f"({(b.value - ctx.rates.mean) * 100:+.1f} points) with all {ctx.labels:,} labels.{tail}")
    return out
