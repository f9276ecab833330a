"""`s2d-plan recommend`: allocate, compile, explain.

The edge of the planner: it reads the plan, probe evidence and calibration from the
history home (``--home``, ``S2D_HOME`` or ``./.s2d``), runs the pure allocator and compiler, and
prints the recommendation (or only the graph JSON with ``--json``).

    >>> graph, summary = recommend_graph("plans/budget.yaml")   # doctest: +SKIP
    >>> graph.predicted.value > 0.759                          # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s2d_plan import costs
from s2d_plan._space import MAX_EPOCHS, MAX_PASSES
from s2d_plan.allocator import Allocation, Context, SearchResult, allocate
from s2d_plan.compiler import compile_graph, resolve
from s2d_plan.graph import StageGraph
from s2d_plan.paths import resolve_home
from s2d_plan.outcome import SolveRates, load_outcome_constants, rates_from_evidence, rl_gain, signal_yield
from s2d_plan.spec import PlanSpec, load_plan


def load_evidence(spec: PlanSpec, home: Path) -> dict[str, SolveRates]:
    """Probe measurements per model on this plan's labeled data, when the history has them."""
    if not home.exists():
        return {}
    try:
        from s2d_plan.history import load_evidence as rows_for
    except ImportError:
        return {}
    out: dict[str, SolveRates] = {}
    source = spec.data.labeled.source
    # a probe stage records the model and source exactly as its graph names them (resolved)
    sources = list(dict.fromkeys([resolve(spec, source), spec.resolve_path(source), source]))
    for model in [spec.student.model] + [t.model for t in spec.teachers]:
        for name, key in ((n, k) for n in dict.fromkeys([resolve(spec, model), model]) for k in sources):
            try:
                rows = rows_for(home, name, key)
            except Exception:  # no database, old schema: no evidence, never a failure
                rows = []
            rates = rates_from_evidence([(int(n), int(c)) for n, c in rows]) if rows else None
            if rates is not None:
                out[model] = rates
                break
    return out


def plan_and_search(spec: PlanSpec, trials: int | None = None,
                    home: str | Path | None = None) -> tuple[Context, SearchResult]:
    """Search the plan with the evidence and calibration of ``home`` (--home / S2D_HOME / ./.s2d)."""
    home = resolve_home(home)
    ctx = Context.from_spec(spec, load_evidence(spec, home), costs.load_constants(home),
                           load_outcome_constants(home))
    return ctx, allocate(ctx, trials)


def _recommended(plan_path: str | Path, trials: int | None,
                 home: str | Path | None) -> tuple[Context, SearchResult, StageGraph]:
    ctx, result = plan_and_search(load_plan(plan_path), trials, home)
    return ctx, result, compile_graph(ctx, result, _meta(ctx, result))


def recommend_graph(plan_path: str | Path, trials: int | None = None,
                    home: str | Path | None = None) -> tuple[StageGraph, str]:
    """The recommended stage graph of a plan and a one-line summary of the choice."""
    ctx, result, graph = _recommended(plan_path, trials, home)
    p = graph.predicted
    summary = (f"{result.best.structure.label}: predicted {p.eval} {p.value:.1%} "
               f"[{p.low:.1%}, {p.high:.1%}], {graph.estimated.gpu_hours:.3g} of {ctx.budget:.3g} GPU-hours")
    return graph, summary


def run_recommend(plan: Path, json_out: bool = False, output: Path | None = None, plot: Path | None = None,
                  trials: int | None = None, home: Path | None = None) -> None:
    """The CLI body: print the recommendation (or only JSON), write the graph and plot."""
    ctx, result, graph = _recommended(plan, trials, home)
    text = graph.to_json()
    if output is not None:
        output.write_text(text + "\n")
    if plot is not None:
        _pareto_plot(result, ctx, plot)
    if json_out:
        print(text)
        return
    print(render(ctx, result, graph))
    from s2d_plan.calibrate import describe

    calibrated = describe(resolve_home(home))
    if calibrated:
        print("\n" + calibrated)
    if output is not None:
        print(f"\nstage graph written to {output} (run it: s2d-plan execute {output})")
    if plot is not None:
        print(f"Pareto plot written to {plot}")


# ---------------------------------------------------------------- explanation


def _meta(ctx: Context, r: SearchResult) -> dict[str, Any]:
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
            "outcome_inputs": _outcome_inputs(ctx, r.best)}  # what `calibrate` refits against


def _outcome_inputs(ctx: Context, a: Allocation) -> dict[str, Any]:
    from s2d_plan._space import pipeline
    from s2d_plan.calibrate import outcome_inputs

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


def _fmt_gb(x: float) -> str:
    return f"{x:.3g} GB" if x < 1 else f"{x:.0f} GB"


def _fmt_h(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:,.0f}"


def render(ctx: Context, r: SearchResult, graph: StageGraph) -> str:
    p = graph.predicted
    lines = [f"plan {ctx.spec.name}: maximize {p.eval} on {ctx.gpus} x {ctx.gpu.name}, "
             f"{_fmt_h(ctx.budget)} GPU-hours, {ctx.labels:,} labels",
             "", f"Recommended: {r.best.structure.label}",
             f"  predicted {p.eval} {p.value:.1%}  (band {p.low:.1%} - {p.high:.1%}; student today {ctx.rates.mean:.1%})"
             f"  ·  {_fmt_h(graph.estimated.gpu_hours)} of {_fmt_h(ctx.budget)} GPU-hours", ""]
    header = ("stage", "model", "labels", "steps", "GPU-h", "mem/GPU", "strategy")
    rows = [header]
    for st in graph.stages:
        model = st.policy if not st.policy.startswith("@") else f"{st.policy}"
        lab = st.data.get("labeled")
        labels = "-" if not lab else (f"{lab['count']:,}" if lab.get("spend", True) else f"({lab['count']:,} read)")
        steps = st.params.get("steps", "-")
        rows.append((st.id, _short(model) if not model.startswith("@") else model, labels, str(steps),
                     _fmt_h(st.estimated.gpu_hours), _fmt_gb(st.estimated.peak_mem_gb_per_gpu),
                     st.estimated.strategy or ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  " + "  ".join(str(c).ljust(w) if i < 2 or i == 6 else str(c).rjust(w)
                                      for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines += ["", f"Alternatives (predicted {p.eval}, band, GPU-hours):"]
    alts = [(a.structure.label, a) for a in r.alternatives[:6]]
    if r.baseline:
        alts.append(("direct GRPO on the student (baseline)", r.baseline))
    width = max([len(label) for label, _ in alts] + [10])
    for label, a in alts:
        ap = a.prediction
        lines.append(f"  {label.ljust(width)}  {ap.value:6.1%}  [{ap.low:.1%} - {ap.high:.1%}]  {_fmt_h(a.gpu_hours):>6}")
    if not r.baseline:
        lines.append("  direct GRPO on the student (baseline): impossible (no labels or it does not fit)")
    by_reason: dict[str, list[str]] = {}
    for label, why in r.infeasible.items():
        by_reason.setdefault(why, []).append(label)
    for why, labels in by_reason.items():
        more = f" and {len(labels) - 1} more like it" if len(labels) > 1 else ""
        lines.append(f"  cannot run: {labels[0]}{more} ({why})")
    lines += ["", "Why:"] + [f"  - {line}" for line in rationale(ctx, r)]
    return "\n".join(lines)


def _pareto_plot(r: SearchResult, ctx: Context, path: Path) -> None:
    import matplotlib  # lazy: ~0.5 s, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(t["gpu_hours"], t["value"], t["structure"]) for t in r.trials if t["feasible"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([x for x, _, _ in pts], [y * 100 for _, y, _ in pts], s=8, alpha=0.35, label="trials")
    front, best_y = [], -1.0
    for x, y, _ in sorted(pts):
        if y > best_y:
            front.append((x, y))
            best_y = y
    ax.step([x for x, _ in front], [y * 100 for _, y in front], where="post", color="C1", label="Pareto front")
    b = r.best
    ax.scatter([b.gpu_hours], [b.prediction.value * 100], marker="*", s=180, color="C3", label="recommended", zorder=5)
    if r.baseline:
        ax.scatter([r.baseline.gpu_hours], [r.baseline.prediction.value * 100], marker="s", s=60, color="k",
                   label="direct GRPO (baseline)", zorder=5)
    ax.axvline(ctx.budget, ls="--", color="grey", lw=1, label="budget")
    ax.set_xlabel("estimated GPU-hours")
    ax.set_ylabel(f"predicted {ctx.spec.objective.eval} (%)")
    ax.set_title(f"{ctx.spec.name}: allocator trials")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
