"""The report's charts: plotly figures built from ``RunData`` (no I/O here).

Each function returns a list of ``Chart`` (an id, a title, a figure); an empty list when
the runs hold nothing to draw, so a report never shows an empty axis. Curves of several
runs share one chart per metric family, one trace per (run, stage, key): runs overlay.

Metric families follow what the runners log (``runners/_train.py``, ``runners/verifier.py``,
TRL's GRPO/GKD logs); a family is drawn from whichever of its keys a stage logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from s2d_plan.contract import short_name
from s2d_plan.report.data import PEAK_MEM_KEY, Residual, RunData

STATUS_COLOUR = {"FINISHED": "#2ca02c", "CACHED": "#17becf", "RUNNING": "#1f77b4", "PENDING": "#c7c7c7",
                 "FAILED": "#d62728", "KILLED": "#9467bd", "SKIPPED": "#ff7f0e"}
# (chart id, title, keys drawn): the training curves against step
FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("reward", "Reward and verifier accuracy", ("reward", "verifier/accuracy")),
    ("verifier", "Verifier parse failures and timeouts", ("verifier/parse_failures", "verifier/timeouts",
                                                          "verifier/errors")),
    ("signal", "Signal yield (groups with mixed outcomes)", ("signal_yield", "signal_yield_groups")),
    ("loss", "Loss (KL / distillation / policy)", ("loss",)),
    ("length", "Completion length (tokens)", ("completions/mean_length",)),
    ("lr", "Learning rate", ("learning_rate",)),
)
MAX_POINTS = 2000  # per curve; longer ones are thinned evenly
LAYOUT = dict(template="plotly_white", height=360, margin=dict(l=60, r=20, t=50, b=50),
              legend=dict(font=dict(size=10)))


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    figure: go.Figure

    @property
    def series(self) -> int:
        return len(self.figure.data)


def _fig(title: str, **axes: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, **{**LAYOUT, **axes})
    return fig


# ------------------------------------------------------------------ the pipeline


def pipeline(run: RunData) -> list[Chart]:
    """The executed graph: a node per stage (placed by dependency depth), an arrow per
    ``needs`` edge, coloured by the stage's status in the history."""
    raw_stages = run.raw_graph.get("stages") or []
    if not raw_stages:
        return []
    status = {s.stage_id: s.status for s in run.stages}
    pos, rows = _layout(raw_stages)
    fig = _fig(f"Pipeline of {run.label}", height=200 + 110 * len(rows),
               xaxis=dict(visible=False), yaxis=dict(visible=False))
    for st in raw_stages:
        for need in st.get("needs", []):
            (x0, y0), (x1, y1) = pos[need], pos[st["id"]]
            fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                               arrowhead=3, arrowsize=1.2, standoff=22, startstandoff=22, arrowcolor="#888", text="")
    by_status: dict[str, list[dict]] = {}
    for st in raw_stages:
        by_status.setdefault(status.get(st["id"], "PENDING"), []).append(st)
    for state, stages in by_status.items():
        fig.add_trace(go.Scatter(
            x=[pos[s["id"]][0] for s in stages], y=[pos[s["id"]][1] for s in stages], mode="markers+text",
            name=state, marker=dict(size=34, color=STATUS_COLOUR.get(state, "#7f7f7f"), symbol="square"),
            text=[_stage_text(s) for s in stages],
            textposition="bottom center", hovertext=[_stage_hover(s, state) for s in stages], hoverinfo="text"))
    fig.update_xaxes(range=[-0.6, max(x for x, _ in pos.values()) + 0.6])
    fig.update_yaxes(range=[min(y for _, y in pos.values()) - 0.6, 0.5])
    return [Chart(f"pipeline-{run.run_id}", fig.layout.title.text, fig)]


def _layout(stages: list[dict[str, Any]]) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """x: dependency depth; y: one row per lineage (the model a stage's ``@`` policy chain
    starts from), so the teacher's stages and the student's run side by side and an
    arrow from one to the other is a diagonal, not drawn over the chain."""
    by_id = {st["id"]: st for st in stages}
    depth: dict[str, int] = {}
    for st in stages:  # graph files list stages after what they need
        depth[st["id"]] = 1 + max((depth.get(n, 0) for n in st.get("needs", [])), default=-1)

    def root(sid: str, seen: int = 0) -> str:
        policy = str(by_id[sid].get("policy") or "")
        ref = policy[1:] if policy.startswith("@") else None
        return root(ref, seen + 1) if ref in by_id and seen < len(by_id) else policy

    rows: dict[str, int] = {}
    taken: dict[tuple[int, int], int] = {}
    pos: dict[str, tuple[float, float]] = {}
    for st in stages:
        row = rows.setdefault(root(st["id"]), len(rows))
        d = depth[st["id"]]
        n = taken.get((d, row), 0)  # siblings at one depth of one lineage: nudge down
        taken[(d, row)] = n + 1
        pos[st["id"]] = (d, -row - 0.35 * n)
    return pos, rows


def _stage_text(st: dict[str, Any]) -> str:
    labeled = (st.get("data") or {}).get("labeled") or {}
    spent = f" · {labeled.get('count')} labels" if labeled and labeled.get("spend", True) else ""
    return f"<b>{st['id']}</b><br>{st['kind']} · {short_name(st.get('policy'))}{spent}"


def _stage_hover(st: dict[str, Any], status: str) -> str:
    labeled = (st.get("data") or {}).get("labeled") or {}
    spent = labeled.get("count") if labeled.get("spend", True) else 0
    parts = [f"{st['id']} ({st['kind']}) {status}", f"policy {st.get('policy')}"]
    if st.get("teacher"):
        parts.append(f"teacher {st['teacher']}")
    if labeled:
        parts.append(f"labels {spent} (rows {labeled.get('offset', 0)}..)")
    est = st.get("estimated") or {}
    if est:
        parts.append(f"est {est.get('gpu_hours', 0):.3g} GPU-h, {est.get('peak_mem_gb_per_gpu', 0):.3g} GB/GPU")
    return "<br>".join(parts)


# ------------------------------------------------------------------ plan vs outcome


def objective(runs: list[RunData]) -> list[Chart]:
    """The allocator's predicted objective (with its interval) next to the measured one."""
    rows = [(r, (r.raw_graph.get("predicted") or {}), r.measured_objective()) for r in runs]
    rows = [(r, p, m) for r, p, m in rows if p or m]
    if not rows:
        return []
    fig = _fig("Objective: predicted (interval) vs measured", yaxis=dict(title="accuracy", tickformat=".1%"))
    pred = [(r.label, p) for r, p, _ in rows if p.get("value") is not None]
    if pred:
        fig.add_trace(go.Scatter(
            x=[x for x, _ in pred], y=[p["value"] for _, p in pred], mode="markers", name="predicted",
            marker=dict(size=12, symbol="diamond"),
            error_y=dict(type="data", symmetric=False, array=[p.get("high", p["value"]) - p["value"] for _, p in pred],
                         arrayminus=[p["value"] - p.get("low", p["value"]) for _, p in pred])))
    meas = [(r.label, m) for r, _, m in rows if m]
    if meas:
        fig.add_trace(go.Scatter(x=[x for x, _ in meas], y=[m[1] for _, m in meas], mode="markers",
                                 name="measured", marker=dict(size=12), hovertext=[m[0] for _, m in meas]))
    return [Chart("objective", fig.layout.title.text, fig)]


def resources(runs: list[RunData]) -> list[Chart]:
    """Per stage: estimated vs measured GPU-hours, and estimated vs measured peak memory."""
    several = len(runs) > 1
    x = [f"{r.label} · {s.stage_id}" if several else s.stage_id for r in runs for s in r.stages]
    est = [s.est_gpu_hours for r in runs for s in r.stages]
    got = [s.gpu_hours for r in runs for s in r.stages]
    charts = []
    if x:
        fig = _fig("GPU-hours per stage: estimated vs measured", barmode="group", yaxis=dict(title="GPU-hours"))
        fig.add_trace(go.Bar(x=x, y=est, name="estimated"))
        fig.add_trace(go.Bar(x=x, y=got, name="measured"))
        charts.append(Chart("gpu-hours", fig.layout.title.text, fig))
    mem_est = [r.estimate(s.stage_id).get("peak_mem_gb_per_gpu") for r in runs for s in r.stages]
    mem_got = [r.last(s.stage_id, PEAK_MEM_KEY) for r in runs for s in r.stages]
    if any(v is not None for v in mem_est + mem_got):
        fig = _fig("Peak memory per stage: estimated (GB per GPU) vs measured", barmode="group",
                   yaxis=dict(title="GB"))
        fig.add_trace(go.Bar(x=x, y=mem_est, name="estimated"))
        if any(v is not None for v in mem_got):
            fig.add_trace(go.Bar(x=x, y=mem_got, name="measured (peak CUDA, or process RSS on CPU)"))
        charts.append(Chart("memory", fig.layout.title.text, fig))
    return charts


# ------------------------------------------------------------------ curves and evals


def curves(runs: list[RunData]) -> list[Chart]:
    """One chart per metric family; a trace per (run, stage, key) that logged a step > 0."""
    charts = []
    several = len(runs) > 1
    for cid, title, keys in FAMILIES:
        fig = _fig(title, xaxis=dict(title="step"))
        for run in runs:
            for st in run.stages:
                for key in keys:
                    pts = run.curves.get((st.stage_id, key), [])
                    if not any(step > 0 for step, _ in pts):
                        continue  # a single step-0 value (a probe's) is a number, not a curve
                    name = f"{st.stage_id} {key}" if len(keys) > 1 else st.stage_id
                    pts = _thin(pts)
                    fig.add_trace(go.Scatter(x=[s for s, _ in pts], y=[v for _, v in pts], mode="lines+markers",
                                             marker=dict(size=4), name=f"{run.label} · {name}" if several else name))
        if fig.data:
            charts.append(Chart(f"curve-{cid}", title, fig))
    return charts


def _thin(points: list, keep: int = MAX_POINTS) -> list:
    """Every n-th point (and the last) of a long curve: a page stays light for a long run."""
    if len(points) <= keep:
        return points
    step = -(-len(points) // keep)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


def evals(runs: list[RunData]) -> list[Chart]:
    """Eval results per eval set: avg@k, pass@k and greedy, a bar group per (run, stage)."""
    sets: dict[str, list[tuple[str, str, float | None, str]]] = {}
    several = len(runs) > 1
    for run in runs:
        for (sid, key), pts in run.curves.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval" and (parts[2].startswith(("avg@", "pass@")) or
                                                             parts[2] == "greedy") and pts:
                who = f"{run.label} · {sid}" if several else sid
                sets.setdefault(parts[1], []).append((who, parts[2], pts[-1][1], run.run_id))
    charts = []
    for name, rows in sorted(sets.items()):
        fig = _fig(f"Eval {name}: avg@k, pass@k, greedy", barmode="group",
                   yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1]))
        for who in dict.fromkeys(w for w, *_ in rows):
            mine = sorted((m, v) for w, m, v, _ in rows if w == who)
            fig.add_trace(go.Bar(x=[m for m, _ in mine], y=[v for _, v in mine], name=who,
                                 text=[f"{v:.1%}" if v is not None else "" for _, v in mine], textposition="auto"))
        charts.append(Chart(f"eval-{name}", fig.layout.title.text, fig))
    return charts


# ------------------------------------------------------------------ the allocator


def alternatives(run: RunData) -> list[Chart]:
    """The allocator's search: every trial (accuracy vs GPU-hours), the best alternative of
    each structure with its interval, the usual-practice baseline, and the chosen point."""
    meta = run.meta
    alts = [a for a in meta.get("alternatives") or [] if isinstance(a, dict) and a.get("value") is not None]
    trials = run.trials or [t for t in (_trial(t) for t in meta.get("trials") or []) if t]
    if not (alts or trials):
        return []
    fig = _fig(f"Alternatives the allocator weighed ({run.label})",
               xaxis=dict(title="GPU-hours (estimated)"), yaxis=dict(title="predicted accuracy", tickformat=".1%"))
    feasible = [t for t in trials if t.feasible is not False and t.value is not None and t.gpu_hours is not None]
    if feasible:
        fig.add_trace(go.Scatter(x=[t.gpu_hours for t in feasible], y=[t.value for t in feasible], mode="markers",
                                 name="search trials", marker=dict(size=5, color="#bbbbbb"),
                                 hovertext=[f"#{t.number} {t.structure}" for t in feasible], hoverinfo="text+x+y"))
    if alts:
        fig.add_trace(go.Scatter(
            x=[a.get("gpu_hours") for a in alts], y=[a["value"] for a in alts], mode="markers", name="best per structure",
            marker=dict(size=10), hovertext=[a.get("structure") for a in alts], hoverinfo="text+x+y",
            error_y=dict(type="data", symmetric=False, array=[a.get("high", a["value"]) - a["value"] for a in alts],
                         arrayminus=[a["value"] - a.get("low", a["value"]) for a in alts])))
    base = meta.get("baseline")
    if isinstance(base, dict) and base.get("value") is not None:
        fig.add_trace(go.Scatter(x=[base.get("gpu_hours")], y=[base["value"]], mode="markers", name=base.get(
            "structure", "baseline"), marker=dict(size=12, symbol="x")))
    pred = run.raw_graph.get("predicted") or {}
    if pred.get("value") is not None:
        fig.add_trace(go.Scatter(x=[(run.raw_graph.get("estimated") or {}).get("gpu_hours")], y=[pred["value"]],
                                 mode="markers", name=f"chosen: {meta.get('structure', run.plan)}",
                                 marker=dict(size=18, symbol="star", color="#d62728")))
    return [Chart(f"alternatives-{run.run_id}", fig.layout.title.text, fig)]


def _trial(t: Any):
    from s2d_plan.report.data import Trial

    if not isinstance(t, dict):
        return None
    return Trial(int(t.get("number", 0)), str(t.get("structure", "")), t.get("value"), t.get("gpu_hours"),
                 t.get("feasible"))


def residuals(rows: list[Residual]) -> list[Chart]:
    """Calibration residuals: measured minus predicted, before (shipped constants) and after."""
    if not rows:
        return []
    x = [f"{r.structure} ({r.run_id[-11:]})" for r in rows]
    fig = _fig("Calibration residuals: measured - predicted", barmode="group",
               yaxis=dict(title="points", tickformat=".0%"))
    fig.add_trace(go.Bar(x=x, y=[r.measured - r.shipped for r in rows], name="shipped constants"))
    fig.add_trace(go.Bar(x=x, y=[r.measured - r.calibrated for r in rows], name="calibrated constants"))
    return [Chart("calibration", fig.layout.title.text, fig)]
