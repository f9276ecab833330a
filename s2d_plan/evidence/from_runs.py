"""`s2d-plan calibrate`: the history's finished runs become evidence for the outcome posterior.

Every graph the planner compiles records the exact inputs of its prediction in
``meta["outcome_inputs"]`` (student size and solve rates, teacher, and the ``Pipeline``
quantities: labels, epochs, rollouts, replay); the benchmark's hand-built graphs record
the same. A finished run pairs those inputs with what its final eval measured
(``eval/<objective>/avg@k`` of the graph's last eval stage, read from ``metrics_latest``
through the stage's cache key, so a CACHED eval counts once, for the run that computed
it). Each becomes a datum with its own noise (seed spread plus the eval's binomial noise
from its number of problems) and is stored in ``<home>/calibration.json``
(``"evidence"``); ``recommend`` then conditions the posterior on the paper's numbers and
these (``s2d_plan.predict.posterior``; cached by the evidence's hash). Nothing is fitted
to zero error: the report shows the error of the prior-only posterior (the paper alone)
and of the updated one, on these runs.

Costs: the measured GPU-hours of every stage that ran (not CACHED) over its estimate give
a time factor per stage kind (measured ratios differ by kind: generation-bound rollouts
and evals are not mis-estimated like training), fitted where a kind has at least
``MIN_KIND_STAGES`` stages, the pooled factor elsewhere; the cost model multiplies each
kind's GPU-hours by its factor.

    >>> calibrate("/nonexistent")
    Traceback (most recent call last):
    s2d_plan.errors.S2DError: calibrate needs at least 3 finished runs with a measured final eval and the outcome inputs of their prediction; the history in /nonexistent has 0. Execute graphs compiled by `s2d-plan recommend` (or benchmarks.tinyworld) first.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2d_plan.errors import S2DError
from s2d_plan.evidence.calibration_file import load_calibration, write_calibration
from s2d_plan.evidence.posterior_cache import posterior_for
from s2d_plan.plan.registry import ModelInfo
from s2d_plan.predict.outcome import OutcomeConstants, Pipeline, SolveRates, predict
from s2d_plan.predict.posterior import Datum, datum_to_json, eval_sd, inputs_from_meta, outcome_inputs, paper_evidence

__all__ = ["calibrate", "fit_costs", "observations", "outcome_inputs", "rmse"]

MIN_RUNS = 3  # distinct finished runs (with outcome inputs and a measured eval) needed to fit anything
MIN_KIND_STAGES = 3  # finished stages of one kind needed for its own time factor (else the pooled one)
# what an older calibrate rescaled by its single time factor (per-kind factors replace it)
_LEGACY_SCALED = ("mfu_train", "gen_bandwidth_eff", "gen_compute_eff", "load_gbs", "decode_step_s", "stage_startup_s")


# ---------------------------------------------------------------- what a graph predicted from


@dataclass(frozen=True)
class Observation:
    run_id: str
    key: str  # the outcome inputs as canonical JSON (runs with equal keys are one configuration)
    label: str  # the run's structure (meta["structure"] or its plan name)
    metric: str  # e.g. eval/tinyworld/avg@8
    measured: float
    student: ModelInfo
    rates: SolveRates
    pipeline: Pipeline
    problems: int | None = None  # eval problems behind ``measured`` (its binomial noise)

    def predicted(self, k: OutcomeConstants) -> float:
        return predict(self.student, self.rates, self.pipeline, k).value


def observations(home: str | Path) -> tuple[list[Observation], dict[str, int]]:
    """Finished runs with outcome inputs and a measured final eval; counts of runs skipped, by reason."""
    from s2d_plan.history.read import query
    from s2d_plan.paths import db_path, resolve_home

    home = resolve_home(home)
    if not db_path(home).exists():
        return [], {}
    _, runs = query("SELECT run_id, graph FROM runs WHERE status = 'FINISHED' ORDER BY start_time", home)
    # the last step of each eval metric of every stage, through cache keys (CACHED stages included)
    _, evals = query("""SELECT s.run_id, s.stage_id, s.cache_key, m.key, arg_max(m.value, m.step) FROM stages s
                        JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
                        WHERE s.status IN ('FINISHED', 'CACHED') AND m.key LIKE 'eval/%/avg@%'
                        GROUP BY ALL""", home)
    by_run: dict[str, dict[str, list[tuple[str, str, float]]]] = {}
    for run_id, stage_id, key_, metric, value in evals:
        if value is not None:
            by_run.setdefault(run_id, {}).setdefault(stage_id, []).append((metric, key_, float(value)))
    out: list[Observation] = []
    skipped: dict[str, int] = {}
    seen: set[str] = set()  # cache keys of final evals already counted
    for run_id, text in runs:
        obs = _observation(run_id, text, by_run.get(run_id, {}), seen)
        if isinstance(obs, str):
            skipped[obs] = skipped.get(obs, 0) + 1
        else:
            out.append(obs)
    return out, skipped


def _observation(run_id: str, text: str | None, measured: dict[str, list[tuple[str, str, float]]],
                 seen: set[str]) -> Observation | str:
    """One finished run as an observation, or why it is skipped."""
    try:
        graph = json.loads(text) if text else {}
    except ValueError:
        return "graph not readable"
    meta = graph.get("meta") or {}
    if not meta.get("outcome_inputs"):
        return "no outcome inputs in its graph (not compiled by recommend or the benchmark)"
    objective = (graph.get("predicted") or {}).get("eval") or meta.get("objective")
    found = None  # the objective's avg@k from the last stage (graph order) that measured it
    for st in graph.get("stages", []):
        k = (st.get("params") or {}).get("k")
        for metric, key_, value in measured.get(st.get("id"), []):
            if metric.startswith(f"eval/{objective}/avg@") and (k is None or metric.endswith(f"@{k}")):
                sizes = [e.get("size") for e in (st.get("data") or {}).get("eval") or []
                         if isinstance(e, dict) and e.get("name") == objective]
                found = (key_, value, metric, sizes[0] if sizes and isinstance(sizes[0], int) else None)
    if not objective or found is None:
        return f"no eval/{objective}/avg@k measured"
    if found[0] in seen:
        return "its final eval was already counted (a cached rerun)"
    seen.add(found[0])
    student, rates, pipe = inputs_from_meta(meta["outcome_inputs"])
    return Observation(run_id, json.dumps(meta["outcome_inputs"], sort_keys=True),
                       str(meta.get("structure") or graph.get("plan")), found[2], found[1], student, rates, pipe,
                       found[3])


# ---------------------------------------------------------------- the update


def rmse(obs: list[Observation], k: OutcomeConstants) -> float:
    return math.sqrt(sum((o.predicted(k) - o.measured) ** 2 for o in obs) / max(len(obs), 1))


def as_data(obs: list[Observation]) -> list[Datum]:
    return [Datum(f"run {o.run_id}: {o.label}", o.student, o.rates, o.pipeline, o.measured,
                  eval_sd(o.measured, o.problems), f"history ({o.metric})") for o in obs]


def fit_costs(home: Path) -> dict[str, Any] | None:
    """Measured / estimated GPU-hours of the stages that ran, per stage kind and pooled.

    Estimates are taken back to the uncalibrated cost model first (each stage records the
    time factor already in its estimate, ``estimated.time_factor``), so calibrating twice
    does not compound. A kind with fewer than ``MIN_KIND_STAGES`` stages gets the pooled
    factor; its own ratio is still reported."""
    from s2d_plan.history.read import query

    _, rows = query("""SELECT run_id, stage_id, kind, gpu_hours, est_gpu_hours FROM stages
                       WHERE status = 'FINISHED' AND gpu_hours > 0 AND est_gpu_hours > 0""", home)
    if not rows:
        return None
    applied = _applied_factors(home, {r[0] for r in rows})
    sums: dict[str, list[float]] = {}
    for run_id, stage_id, kind, measured, est in rows:
        acc = sums.setdefault(kind, [0.0, 0.0, 0])
        acc[0] += measured
        acc[1] += est / applied.get((run_id, stage_id), 1.0)
        acc[2] += 1
    pooled = sum(a[0] for a in sums.values()) / sum(a[1] for a in sums.values())
    by_kind = {k: {"ratio": round(a[0] / a[1], 4), "stages": a[2], "fitted": a[2] >= MIN_KIND_STAGES,
                   "factor": round(a[0] / a[1] if a[2] >= MIN_KIND_STAGES else pooled, 4)}
               for k, a in sorted(sums.items())}
    return {"factor": round(pooled, 4), "stages": len(rows), "min_stages": MIN_KIND_STAGES, "by_kind": by_kind}


def _applied_factors(home: Path, run_ids: set[str]) -> dict[tuple[str, str], float]:
    """(run, stage) -> the time factor its graph's estimate already carried."""
    from s2d_plan.history.read import query

    _, runs = query("SELECT run_id, graph FROM runs", home)
    out: dict[tuple[str, str], float] = {}
    for run_id, text in runs:
        if run_id not in run_ids or not text:
            continue
        try:
            stages = json.loads(text).get("stages") or []
        except (ValueError, AttributeError):
            continue
        for st in stages:
            f = (st.get("estimated") or {}).get("time_factor")
            if isinstance(f, (int, float)) and f > 0:
                out[(run_id, st.get("id"))] = float(f)
    return out


def _cost_constants(old: dict[str, Any], cost_fit: dict[str, Any] | None) -> dict[str, Any]:
    """The ``costs`` block to write: what was there, with the fitted time factors."""
    out = dict(old.get("costs", {}))
    if not cost_fit:
        return out
    if (old.get("fit") or {}).get("costs") and "time_factor" not in out:
        for name in _LEGACY_SCALED:  # an older calibrate scaled these by one factor; factors replace that
            out.pop(name, None)
    out["time_factor"] = cost_fit["factor"]
    out["kind_factors"] = {k: v["factor"] for k, v in cost_fit["by_kind"].items() if v["fitted"]}
    return out


def calibrate(home: str | Path | None = None, min_runs: int = MIN_RUNS,
              progress: Callable[[int, int], None] | None = None,
              sources: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Fit, write ``<home>/calibration.json``, and return what was written plus a per-run table.

    ``sources``: take the runs (outcome evidence and stage times) from these homes' histories
    instead of ``home``'s, and write the calibration to ``home``: a held-out calibration, e.g.
    one world planned with evidence from the other worlds only (benchmarks/worlds.py)."""
    from s2d_plan.paths import resolve_home

    home = resolve_home(home)
    obs, skipped = _observations_of(sources or [home])
    if len(obs) < min_runs:
        why = "; ".join(f"{n} run(s): {w}" for w, n in skipped.items())
        raise S2DError(f"calibrate needs at least {min_runs} finished runs with a measured final eval and the "
                       f"outcome inputs of their prediction; the history in {home} has {len(obs)}"
                       + (f" (skipped {why})" if why else "")
                       + ". Execute graphs compiled by `s2d-plan recommend` (or benchmarks.tinyworld) first.")
    in_force = load_calibration(home)
    prior_only = posterior_for(paper_evidence(), home, in_force.pins, progress).mode
    data = as_data(obs)
    updated = posterior_for(paper_evidence() + data, home, in_force.pins, progress)
    fitted = updated.mode
    before, after = rmse(obs, prior_only), rmse(obs, fitted)
    table = [{"run_id": o.run_id, "structure": o.label, "measured": o.measured, "before": o.predicted(prior_only),
              "after": o.predicted(fitted)} for o in obs]
    old = in_force.raw or {}
    names = [n for n in updated.names if updated.narrowed(n) < 0.5]
    cost_fit = _merge_costs([fit_costs(resolve_home(h)) for h in (sources or [home])])
    cost_out = _cost_constants(old, cost_fit)
    fit = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "runs": len(obs),
           "metrics": sorted({o.metric for o in obs}), "fitted": names,
           "rmse_before": before, "rmse_after": after, "skipped": skipped,
           "costs": cost_fit}
    fit["sigma_model"] = updated.sigma_model
    fit["ranges"] = {n: list(updated.interval(n)) for n in names}
    fit["posterior"] = updated.info.get("key")
    doc = {"outcome": dict(old.get("outcome", {})), "evidence": [datum_to_json(d) for d in data],
           "costs": cost_out, "fit": fit}
    path = write_calibration(home, doc)
    return {**doc, "table": table, "path": str(path)}


def _observations_of(homes: Sequence[str | Path]) -> tuple[list[Observation], dict[str, int]]:
    """Observations of several histories together (run ids are unique across homes)."""
    obs: list[Observation] = []
    skipped: dict[str, int] = {}
    for h in homes:
        o, s = observations(h)
        obs += o
        for why, n in s.items():
            skipped[why] = skipped.get(why, 0) + n
    return obs, skipped


def _merge_costs(fits: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Per-home cost fits as one: ratios weighted by stage counts (the pooled factor likewise)."""
    fits = [f for f in fits if f]
    if len(fits) <= 1:
        return fits[0] if fits else None
    kinds: dict[str, list[float]] = {}
    for f in fits:
        for kind, v in f["by_kind"].items():
            acc = kinds.setdefault(kind, [0.0, 0])
            acc[0] += v["ratio"] * v["stages"]
            acc[1] += v["stages"]
    stages = sum(f["stages"] for f in fits)
    pooled = sum(f["factor"] * f["stages"] for f in fits) / stages
    by_kind = {k: {"ratio": round(a[0] / a[1], 4), "stages": a[1], "fitted": a[1] >= MIN_KIND_STAGES,
                   "factor": round(a[0] / a[1] if a[1] >= MIN_KIND_STAGES else pooled, 4)}
               for k, a in sorted(kinds.items())}
    return {"factor": round(pooled, 4), "stages": stages, "min_stages": MIN_KIND_STAGES, "by_kind": by_kind}
