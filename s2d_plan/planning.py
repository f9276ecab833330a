"""Planning, composed once: a plan and a home become a ``Recommendation``.

Every caller that plans (the API, the CLI through it, adaptive execution) goes through
here, so the steps stand in one place and in one order: read the home's evidence at its
edge (``evidence.read_home``: calibration, probe rates, the plan's last run; the only
I/O), condition the posterior on the paper and the calibration (cached in the home),
build the search context, search, compile. The rationale is computed with the search, so
a notebook holding a ``Recommendation`` has every sentence the CLI prints.

    >>> import tempfile
    >>> from s2d_plan.plan.spec import load_plan
    >>> rec = recommend(load_plan("plans/budget.yaml"), tempfile.mkdtemp(), trials=10)
    >>> rec.graph.predicted.eval, bool(rec.rationale)
    ('math500', True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from s2d_plan.allocate.allocator import Context, SearchResult, allocate
from s2d_plan.allocate.explain import graph_meta
from s2d_plan.compiler import compile_graph
from s2d_plan.errors import GraphError
from s2d_plan.evidence.calibration_file import Calibration
from s2d_plan.evidence.home import HomeEvidence, read_home
from s2d_plan.evidence.posterior_cache import posterior_for
from s2d_plan.graph import StageGraph, parse_graph
from s2d_plan.plan.spec import PlanSpec
from s2d_plan.predict.posterior import paper_evidence


@dataclass(frozen=True)
class Recommendation:
    """A plan's recommended pipeline: the search (``result``), the compiled ``graph``,
    the context it was searched in, the calibration in force and the rationale."""

    ctx: Context
    result: SearchResult
    graph: StageGraph
    calibration: Calibration
    rationale: tuple[str, ...]

    @property
    def summary(self) -> str:
        p = self.graph.predicted
        return (f"{self.result.best.structure.label}: predicted {p.eval} {p.value:.1%} [{p.low:.1%}, {p.high:.1%}], "
                f"{_hours(self.graph.estimated.gpu_hours)} of {_hours(self.ctx.budget)} GPU-hours")


def context_for(spec: PlanSpec, evidence: HomeEvidence) -> Context:
    """The search context of ``spec`` under a home's evidence (the posterior conditioned
    on the paper's numbers and the calibration's runs)."""
    cal = evidence.calibration
    post = posterior_for(paper_evidence() + cal.evidence, evidence.home, cal.pins)
    return Context.from_spec(spec, evidence.rates, cal.costs, post)


def recommend(spec: PlanSpec, home: str | Path | None = None, trials: int | None = None,
              evidence: HomeEvidence | None = None) -> Recommendation:
    """Search ``spec`` under the evidence of ``home`` (read here unless given) and compile the best."""
    evidence = evidence if evidence is not None else read_home(spec, home)
    ctx = context_for(spec, evidence)
    result = allocate(ctx, trials)
    meta = graph_meta(ctx, result)
    return Recommendation(ctx, result, compile_graph(ctx, result, meta), evidence.calibration,
                          tuple(meta["rationale"]))


def graph_for_plan(spec: PlanSpec, home: str | Path | None = None) -> tuple[StageGraph, str]:
    """The graph ``execute PLAN`` runs, and what was chosen, in one line.

    If the newest run of this exact plan (same content hash) did not finish, its graph is
    run again: a resumed plan must not be re-planned, or evidence that its own probe
    recorded would change the allocation and with it the keys of stages already done.
    The home is read once, for both the resume check and the planning."""
    evidence = read_home(spec, home)
    unfinished = _unfinished(evidence.last_run)
    if unfinished is None:
        rec = recommend(spec, evidence=evidence)
        return rec.graph, rec.summary
    run_id, status, graph = unfinished
    p = graph.predicted
    chose = f"{graph.meta.get('structure', graph.plan)}" + (f": predicted {p.eval} {p.value:.1%}" if p else "")
    return graph, (f"resuming the graph of run {run_id} ({status}; the plan is unchanged): {chose}, "
                   f"{graph.estimated.gpu_hours:.3g} GPU-hours")


def _unfinished(last: tuple[str, str, str | None] | None) -> tuple[str, str, StageGraph] | None:
    if last is None or last[1] == "FINISHED" or not last[2]:
        return None
    try:
        return last[0], last[1], parse_graph(json.loads(last[2]), source=f"run {last[0]}")
    except (GraphError, ValueError):
        return None  # a graph this version cannot read: plan afresh


def _hours(x: float) -> str:
    """GPU-hours as people write them (0.0123, 4.56, 1,600), never 1.6e+03."""
    return f"{x:.3g}" if x < 10 else f"{x:,.0f}"
