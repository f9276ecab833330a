"""What the commands print: the recommendation, a plan's summary, a dry run, a run, a
calibration. Every function returns text (or rows) from the API's values; only the
command functions in ``s2d_plan.cli`` write to the terminal.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2d_plan.contract import short_name
from s2d_plan.evidence.calibration_file import describe
from s2d_plan.plan.registry import ModelInfo
from s2d_plan.plan.spec import PlanSpec
from s2d_plan.planning import Recommendation

if TYPE_CHECKING:
    from s2d_plan.graph import StageGraph
    from s2d_plan.run.preview import DryRunStage


def gigabytes(x: float) -> str:
    return f"{x:.3g} GB" if x < 1 else f"{x:.0f} GB"


def hours(x: float) -> str:
    """GPU-hours as people write them: 0.0123, 4.56, 1,234."""
    return f"{x:.3g}" if x < 10 else f"{x:,.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _candidates(rec: Recommendation) -> list[tuple[Any, str]]:
    r = rec.result
    out = [(r.best, "recommended")] + [(a, "alternative") for a in r.alternatives]
    if r.baseline and r.baseline is not r.best:
        out.append((r.baseline, "baseline"))
    return out


def alternatives(rec: Recommendation) -> tuple[list[str], list[tuple]]:
    """The recommendation and every alternative as rows (what --table/--csv print)."""
    rows = []
    for a, role in _candidates(rec):
        p = a.prediction
        rows.append((a.structure.label, role, round(p.value, 4), round(p.low, 4), round(p.high, 4),
                     None if p.mean is None else round(p.mean, 4), None if p.p_best is None else round(p.p_best, 3),
                     None if p.p_beats_direct is None else round(p.p_beats_direct, 3), round(a.gpu_hours, 4)))
    return ["structure", "role", "predicted", "low", "high", "mean", "p_best", "p_beats_direct", "gpu_hours"], rows


def recommendation(rec: Recommendation) -> str:
    """What `s2d-plan recommend` prints: the pipeline, its prediction, alternatives, why."""
    ctx, r, graph = rec.ctx, rec.result, rec.graph
    p = graph.predicted
    beats = "" if p.p_beats_direct is None else f"P(beats direct GRPO) {_pct(p.p_beats_direct)}, "
    lines = [f"plan {ctx.spec.name}: maximize {p.eval} on {ctx.gpus} x {ctx.gpu.name}, "
             f"{hours(ctx.budget)} GPU-hours, {ctx.labels:,} labels",
             "", f"Recommended: {r.best.structure.label}",
             f"  predicted {p.eval} {p.value:.1%}  (80% interval {p.low:.1%} - {p.high:.1%}; student today "
             f"{ctx.rates.mean:.1%})  ·  {hours(graph.estimated.gpu_hours)} of {hours(ctx.budget)} GPU-hours",
             f"  {beats}P(best of the candidates) {_pct(p.p_best)}", ""]
    lines += _stage_table(graph)
    lines += ["", f"Candidates (predicted {p.eval}: median [80% interval], P(best), P(beats direct GRPO), GPU-hours):"]
    shown = _candidates(rec)[:8]
    if r.baseline and all(a is not r.baseline for a, _ in shown):
        shown.append((r.baseline, "baseline"))
    width = max([len(a.structure.label) for a, _ in shown] + [10])
    for a, role in shown:
        ap = a.prediction
        tag = {"recommended": " <- recommended", "baseline": " (the usual practice)"}.get(role, "")
        lines.append(f"  {a.structure.label.ljust(width)}  {ap.value:6.1%} [{ap.low:.1%} - {ap.high:.1%}]  "
                     f"{_pct(ap.p_best):>4}  {_pct(ap.p_beats_direct):>4}  {hours(a.gpu_hours):>6}{tag}")
    if not r.baseline:
        lines.append("  direct GRPO on the student: impossible here (no labels, the pins, or it does not fit)")
    by_reason: dict[str, list[str]] = {}
    for label, why in r.infeasible.items():
        by_reason.setdefault(why, []).append(label)
    for why, labels in by_reason.items():
        more = f" and {len(labels) - 1} more like it" if len(labels) > 1 else ""
        lines.append(f"  cannot run: {labels[0]}{more} ({why})")
    lines += _sensitivity_lines(rec)
    lines += ["", "Why:"] + [f"  - {line}" for line in rec.rationale]
    note = describe(rec.calibration)
    return "\n".join(lines + (["", note] if note else []))


def _stage_table(graph: StageGraph) -> list[str]:
    header = ("stage", "model", "labels", "steps", "GPU-h", "mem/GPU", "strategy")
    rows = [header]
    for st in graph.stages:
        lab = st.data.labeled
        labels = "-" if not lab else (f"{lab.count:,}" if lab.spend else f"({lab.count:,} read)")
        steps = getattr(st.params, "steps", None) or "-"
        rows.append((st.id, short_name(st.policy), labels, str(steps),
                     hours(st.estimated.gpu_hours), gigabytes(st.estimated.peak_mem_gb_per_gpu),
                     st.estimated.strategy or ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return ["  " + "  ".join(str(c).ljust(w) if i < 2 or i == 6 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _sensitivity_lines(rec: Recommendation) -> list[str]:
    rows = rec.result.sensitivity
    if not rows:
        return []
    out = ["", "Sensitivity (each constant moved alone across its range; margin = pick minus the next candidate, "
               "points):"]
    for row in rows:
        lo, hi = row["range"]
        kind = "assumed, prior range" if row["assumed"] else \
            ("data-backed, posterior 80%" if row["data_backed"] else "published range")
        m0, m1 = row["margin_points"]
        flip = (f"; the pick flips to {row['flips']['to']} at {row['flips']['at']:.3g}" if row["flips"] else "")
        out.append(f"  {row['constant']} ({kind} {lo:.3g}-{hi:.3g}): margin {m0:+.1f} to {m1:+.1f}{flip}")
    if any(row["flips"] and row["assumed"] for row in rows):
        out.append("  The pick rests on an assumed constant the evidence has not narrowed: a pilot or a run in the "
                   "history that measures it would settle the choice.")
    return out


def pareto_plot(rec: Recommendation, path: Path) -> None:
    """Accuracy vs GPU-hours of every trial, the front and the pick, as a PNG."""
    r, ctx = rec.result, rec.ctx
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


def summarize_plan(spec: PlanSpec) -> str:
    """A one-screen, human summary of a valid plan (what `validate` prints)."""
    s = spec.student.info
    lines = [f"plan {spec.name} (hash {spec.hash()}): valid",
             f"  objective  maximize {spec.objective.eval}",
             f"  student    {_model_line(s, spec.objective.eval)}"]
    if not spec.teachers:
        lines.append("  teachers   none (GRPO on the student is the only route)")
    for i, t in enumerate(spec.teachers):
        info = t.info
        notes = []
        if info.params_b <= s.params_b:
            notes.append("not larger than the student: cannot teach")
        notes.append("same tokenizer: token-level distillation possible" if info.shares_tokenizer(s)
                     else f"different tokenizer ({info.tokenizer} vs {s.tokenizer}): sequence-level only")
        label = "teachers  " if i == 0 else "          "
        lines.append(f"  {label} {_model_line(info, spec.objective.eval)}; {'; '.join(notes)}")
    d = spec.data
    lines.append(f"  labeled    {d.labeled.size:,} problems from {d.labeled.source or '(no source)'}"
                 f" (fields {d.labeled.problem_field}/{d.labeled.answer_field})")
    if d.prompts:
        lines.append(f"  prompts    {d.prompts.size:,} unlabeled from {d.prompts.source or '(no source)'}")
    else:
        lines.append("  prompts    none (distillation reuses labeled prompts without their answers)")
    g = spec.compute.gpu_info
    lines.append(f"  compute    {spec.compute.gpus} x {g.name} ({g.memory_gb:g} GB) for {spec.compute.hours:g} h"
                 f" = {hours(spec.compute.gpu_hours)} GPU-hours")
    lines.append("  eval       " + ", ".join(e.name for e in spec.eval))
    pins = spec.pins.model_dump(exclude_defaults=True)
    if pins:
        lines.append("  pins       " + ", ".join(f"{k}={v}" for k, v in pins.items()))
    lines.append(f"  search     {spec.search.trials} trials, seed {spec.search.seed}")
    return "\n".join(lines)


def _model_line(info: ModelInfo, objective: str) -> str:
    acc = info.accuracy.get(objective)
    acc_text = f", {objective} {acc.value:.1%}" if acc else ""
    origin = "" if info.known else " (user-described)"
    return f"{info.name}{origin}: {info.params_b:g}B, {info.layers} layers, {info.tokenizer} tokenizer{acc_text}"


def dry_run(graph: StageGraph, stages: list[DryRunStage], home: Path) -> str:
    lines = [f"plan {graph.plan}: {len(graph.stages)} stages, home {home} (dry run: nothing runs)"]
    total = 0.0
    for i, d in enumerate(stages, 1):
        s = d.stage
        total += 0.0 if d.state == "cached" else s.estimated.gpu_hours
        needs = f" after {', '.join(s.needs)}" if s.needs else ""
        lines.append(f"{i}. {s.id} [{s.kind}] key {d.key} {d.state}; {s.resources.gpus} GPU, "
                     f"est {s.estimated.gpu_hours:.2f} GPU-h{needs}")
        lines += [f"   {line}" for line in _settings(s.params)]
        if d.state != "cached":
            lines.append(f"   $ {shlex.join(d.argv)}")
    whole = graph.estimated.gpu_hours or sum(s.estimated.gpu_hours for s in graph.stages)
    lines.append(f"estimated GPU-hours to run: {total:.2f} (whole graph {whole:.2f})")
    return "\n".join(lines)


def _settings(p: Any) -> list[str]:
    """What a stage runs with beyond its command: vLLM as the memory model assumed it, and
    LoRA with the learning rate the runner will use."""
    out = []
    v = getattr(p, "vllm", None)
    if v is not None:
        where = f"server {v.server_base_url or '(host/port from TRL)'}" if v.mode == "server" else v.mode
        out.append(f"vllm: {where}, gpu_memory_utilization {v.gpu_memory_utilization:g}, tensor_parallel_size "
                   f"{v.tensor_parallel_size}, sleep mode {'on' if v.enable_sleep_mode else 'off'}"
                   + (f", max_model_len {v.max_model_len}" if v.max_model_len else "")
                   + " (applied where vLLM runs)")
    if getattr(p, "lora", None) is not None and getattr(p, "learning_rate", None) is not None:
        out.append(f"train: {'LoRA (merged on save)' if p.lora else 'full fine-tuning'}, "
                   f"learning_rate {p.learning_rate:g}")
    return out


def calibration_report(report: dict[str, Any]) -> str:
    fit = report["fit"]
    lines = [f"calibrated from {fit['runs']} finished run(s) ({', '.join(fit['metrics'])})"]
    width = max(len(r["structure"]) for r in report["table"])
    lines.append(f"  {'structure'.ljust(width)}  measured  before   after")
    for r in report["table"]:
        lines.append(f"  {r['structure'].ljust(width)}  {r['measured']:7.1%}  {r['before']:6.1%}  {r['after']:6.1%}")
    lines.append(f"prediction error on these runs (RMSE, points, posterior mode): paper evidence alone "
                 f"{fit['rmse_before'] * 100:.2f}, with these runs {fit['rmse_after'] * 100:.2f}")
    lines.append(f"model error beyond seed noise (sigma_model): {fit['sigma_model'] * 100:.2f} points")
    if fit["fitted"]:
        lines.append("narrowed by the evidence (posterior 80% range): " + ", ".join(
            f"{n} {lo:.3g}-{hi:.3g}" for n, (lo, hi) in fit["ranges"].items()))
    else:
        lines.append("no constant narrowed to under half its prior spread: the runs say little about them")
    if fit["costs"]:
        lines += _cost_factors(fit["costs"])
    lines += [f"skipped {n} run(s): {why}" for why, n in fit["skipped"].items()]
    lines.append(f"written to {report['path']} (recommend uses it from now on)")
    return "\n".join(lines)


def _cost_factors(c: dict[str, Any]) -> list[str]:
    """The per-kind time factors calibrate fitted (what the cost model now multiplies by)."""
    lines = [f"cost time factors (measured / estimated GPU-hours over {c['stages']} stage(s); pooled {c['factor']:.3g}):"]
    for kind, k in c["by_kind"].items():
        how = "fitted" if k["fitted"] else f"pooled: fewer than {c['min_stages']} stages"
        lines.append(f"  {kind.ljust(8)} {k['factor']:6.3g}  ({k['stages']} stage(s), ratio {k['ratio']:.3g}; {how})")
    return lines


def decisions(session: str, trail: list) -> str:
    """An adaptive session's decision trail, one block per decision."""
    if not trail:
        return f"no decisions recorded for session {session}"
    lines = [f"adaptive session {session}: {len(trail)} decision(s)"]
    for d in trail:
        when = f"{d.time:%H:%M:%S}" if d.time is not None else ""
        run = f"  run {d.run_id}" if d.run_id else ""
        lines.append(f"  {d.seq:>2}. {when} {d.kind:<10} {d.why}{run}")
        for c in (d.candidates or [])[:6] if d.kind in ("candidates", "choose") else []:
            voi = f"  value of a pilot {c['voi'] * 100:.1f} pts" if c.get("voi") else ""
            lines.append(f"        {c['label']:<44} {c['median'] or 0:6.1%} [{c['low'] or 0:.1%}, "
                         f"{c['high'] or 0:.1%}]{voi}")
        for g, curve in (d.evidence.get("curves") or {}).items():
            if curve:
                lines.append(f"        {g}: sigmoid in steps -> {curve['predicted']:.1%} at {curve['at']:.0f} steps "
                             f"(asymptote {curve['asymptote']:.1%})")
    return "\n".join(lines)
