"""Why the allocator chose what it chose: plain-words reasons tied to the reward-density
principle, and the graph's ``meta`` block (alternatives, rationale, the inputs of the
prediction that ``calibrate`` refits against). Pure: no I/O, no printing.
"""

from __future__ import annotations

from typing import Any

from s2d_plan.allocate.allocator import Allocation, Context, SearchResult
from s2d_plan.allocate.choice import full_bridge
from s2d_plan.allocate.space import MAX_EPOCHS, MAX_PASSES, pipeline
from s2d_plan.contract import short_name
from s2d_plan.predict.outcome import rl_gain, signal_yield
from s2d_plan.predict.posterior import outcome_inputs

# ---------------------------------------------------------------- explanation


def graph_meta(ctx: Context, r: SearchResult) -> dict[str, Any]:
    """What a compiled graph keeps about its choice (``graph.meta``)."""
    def row(a: Allocation) -> dict[str, Any]:
        p = a.prediction
        extra = {k: round(v, 4) for k, v in (("mean", p.mean), ("p_best", p.p_best),
                                             ("p_beats_direct", p.p_beats_direct)) if v is not None}
        return {"structure": a.structure.label, "value": round(p.value, 4), "low": round(p.low, 4),
                "high": round(p.high, 4), **extra, "gpu_hours": round(a.gpu_hours, 3),
                "quantities": a.quantities.params()}

    rates = {ctx.spec.student.model: ctx.rates, **{k: v[1] for k, v in ctx.teachers.items()}}
    return {"structure": r.best.structure.label, "quantities": r.best.quantities.params(),
            "rationale": rationale(ctx, r), "alternatives": [row(a) for a in r.alternatives],
            "baseline": row(r.baseline) if r.baseline else None, "infeasible": r.infeasible, "notes": r.notes,
            "paper_recipe": row(r.paper) if r.paper else None, "sensitivity": r.sensitivity,
            "set_aside": r.simpler,
            "solve_rates": {k: {"mean": round(v.mean, 4), "kappa": v.kappa, "source": v.source} for k, v in rates.items()},
            "budget_gpu_hours": ctx.budget, "search": r.search, "trials": r.trials,
            "outcome_inputs": _outcome_inputs(ctx, r.best),  # what `calibrate` refits against
            # the plan itself, so `validate GRAPH.json` can check the rules without it
            "plan_spec": {"spec": ctx.spec.model_dump(mode="json"), "base_dir": str(ctx.spec.base_dir)}}


def _outcome_inputs(ctx: Context, a: Allocation) -> dict[str, Any]:
    return outcome_inputs(ctx.student, ctx.rates, pipeline(ctx, a.structure, a.quantities, a.costs))


def rationale(ctx: Context, r: SearchResult) -> list[str]:
    """Plain-words reasons, each tied to the reward-density principle."""
    s = r.best.structure
    out = _choice_reasons(ctx, r) + _teacher_reasons(ctx, r) + _bridge_reasons(ctx, r) + _student_reasons(ctx, r)
    if r.best.gpu_hours < 0.5 * ctx.budget and (s.teacher or s.direct):
        out.append(f"Only {r.best.gpu_hours:.3g} of {ctx.budget:.3g} GPU-hours are planned: past this point every "
                   f"stage is at its search bound ({MAX_EPOCHS:g} epochs, {MAX_PASSES:g} passes over the prompts) or "
                   "saturated, so labels, not compute, are the binding budget.")
    if s.probe:
        out.append(f"A probe first measures the student's per-prompt solve rates on the labels: the pick is the best "
                   f"candidate with probability {r.best.prediction.p_best or 0:.0%} only, and its evidence sharpens "
                   "the next recommend.")
    for model, rates in [(ctx.spec.student.model, ctx.rates)] + [(k, v[1]) for k, v in ctx.teachers.items()]:
        if rates.estimated:
            out.append(f"{short_name(model)} has no published {ctx.spec.objective.eval} figure: {rates.mean:.1%} is "
                       f"{rates.source}; flagged, and its predictions carry a wide prior on it.")
        elif rates.source.startswith("probe"):
            out.append(f"{short_name(model)}'s solve rates come from a probe in the history ({rates.source}), "
                       "not the registry prior.")
    return out + r.notes


def _choice_reasons(ctx: Context, r: SearchResult) -> list[str]:
    """How the pick relates to the paper's recipe and to richer candidates set aside."""
    out = []
    best, paper = r.best, r.paper
    if r.simpler:
        x = r.simpler
        out.append(f"{x['structure']} is predicted {x['extra_points']:+.1f} points above the pick, less than one "
                   f"run's noise ({x['noise_points']:.2f} points): its extra stages are not planned.")
    if paper is not None and paper.structure.label != best.structure.label.removeprefix("probe -> "):
        bp, pp = best.prediction, paper.prediction
        mine = f"{bp.value:.1%} [{bp.low:.1%} - {bp.high:.1%}]"
        theirs = f"{pp.value:.1%} [{pp.low:.1%} - {pp.high:.1%}]"
        out.append(f"The paper's recipe ({paper.structure.label}) is not the pick here: predicted {theirs} vs "
                   f"{mine} for the pick. " + _why_not_recipe(ctx, r))
    elif paper is None and ctx.teachers and ctx.labels > 0:
        out.append("The paper's recipe (RL on a teacher, then FKL->OPD) cannot run as planned for this plan "
                   "(see 'cannot run').")
    return out


def _why_not_recipe(ctx: Context, r: SearchResult) -> str:
    best, paper = r.best, r.paper
    parts = paper.prediction.parts
    t_gain = parts.get("teacher", 0) - (ctx.teachers[paper.structure.teacher][1].mean if paper.structure.teacher else 0)
    if r.simpler and r.simpler["structure"] == paper.structure.label:
        return "Its extra stages add less than their noise."
    if best.structure.direct or best.structure.teacher is None:
        bridged = parts.get("bridged", ctx.rates.mean)
        return (f"With these labels and this budget the teacher's RL lifts it only {t_gain * 100:+.1f} points and "
                f"the bridge brings the student to {bridged:.1%}; the labels do more on the student directly.")
    if best.structure.teacher != paper.structure.teacher:
        return f"{short_name(best.structure.teacher)} is predicted to be the better teacher for this student."
    return ("The stages it adds or removes change the prediction by more than their noise (see the candidates); "
            "the evidence, not the recipe, decides.")


def _teacher_reasons(ctx: Context, r: SearchResult) -> list[str]:
    s, q, parts = r.best.structure, r.best.quantities, r.best.prediction.parts
    g = q.group_size
    if s.teacher and s.teacher_rl:
        tr = ctx.teachers[s.teacher][1]
        yt, ys = signal_yield(tr.mean, tr.kappa, g), signal_yield(ctx.rates.mean, ctx.rates.kappa, g)
        lift = f"{tr.mean:.1%} -> {parts.get('teacher', tr.mean):.1%}"
        head = f"Labels go to {short_name(s.teacher)} first ({q.teacher_labels:,} of {ctx.labels:,}, GRPO with G={g}): "
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
        return [f"{short_name(s.teacher)} is used raw ({why}): a teacher that RL has not reward-shaped is a weaker "
                "dense reward (the paper's raw-teacher ablation: -7.8 MATH points)."]
    return []


def _bridge_reasons(ctx: Context, r: SearchResult) -> list[str]:
    best, s = r.best, r.best.structure
    if not s.teacher:
        return []
    name = {"fkl+opd": "forward-KL warmup on teacher rollouts, then on-policy distillation",
            "opd": "on-policy distillation", "fkl": "forward-KL on teacher rollouts"}[s.bridge]
    if s.bridge == "fkl" and not s.fkl_token:
        name = f"sequence-level forward-KL on {short_name(s.teacher)}'s text (no token-level transfer fits or applies)"
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
        parts = best.prediction.parts
        after = parts.get("final", best.prediction.value) - parts.get("bridged", ctx.rates.mean)
        cold = rl_gain(ctx.rates.mean, ctx.rates.kappa, ctx.student.params_b, q.student_labels, q.student_epochs,
                       q.group_size, k=ctx.k, tokens=None if ctx.scale.tiny else ctx.scale.max_new)[0]
        which = ("All" if not s.teacher_rl else "The other" if not ctx.reuse
                 else "All (reused, as the plan allows)")
        why = ("the bridged student is ready for sparse reward" if after > cold else
               "the bridge and these labels together are predicted above either alone")
        out.append(f"{which} {q.student_labels:,} labels go to Stage 3 GRPO after the bridge, adding a predicted "
                   f"{after * 100:+.1f} points, vs {cold * 100:+.1f} for the same labels on the cold student: {why}.")
    if s.direct:
        why = ("no teacher is listed" if not ctx.teachers else
               "the plan pins teacher: none" if ctx.spec.pins.teacher == "none" else
               "it is predicted to do best (see the candidates)")
        ys = signal_yield(ctx.rates.mean, ctx.rates.kappa, q.group_size)
        out.append(f"Labels go to GRPO on the student because {why}: a group of {q.group_size} has mixed "
                   f"outcomes on {ys:.0%} of its prompts.")
    if s.teacher is None and not s.direct and ctx.labels == 0:
        for name in ctx.teachers:
            if ctx.teachers[name][0].params_b > ctx.student.params_b:
                st, p = full_bridge(ctx, name)
                out.append(f"A full raw bridge from {short_name(name)} (one pass over the {ctx.pool:,} prompts) is "
                           f"predicted at {st['median']:.1%} [{st['low']:.1%} - {st['high']:.1%}]: it beats the "
                           f"student as it is with probability {p:.0%}.")
    if s.teacher is None and not s.direct:
        out.append("No candidate is predicted to improve the student by more than a run's noise within the budget"
                   + (" (with no labels only a raw teacher is left, and raw-teacher transfer is predicted not to pay: "
                      "the paper's raw-teacher ablation)" if ctx.labels == 0 and ctx.teachers else "")
                   + "; the plan only evaluates it.")
    if r.baseline:
        b = r.baseline.prediction
        vs = ("" if r.baseline is r.best or best.prediction.p_beats_direct is None else
              f"; the pick beats it with probability {best.prediction.p_beats_direct:.0%}")
        out.append(f"Direct GRPO on the student (the usual practice) is predicted at {b.value:.1%} "
                   f"[{b.low:.1%} - {b.high:.1%}] with all {ctx.labels:,} labels{vs}.")
    return out
