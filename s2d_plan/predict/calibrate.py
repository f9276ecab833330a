"""`s2d-plan calibrate`: refit the outcome model (and the cost model's speed) to finished runs.

Every graph the planner compiles records the exact inputs of its prediction in
``meta["outcome_inputs"]`` (student size and solve rates, teacher, and the ``Pipeline``
quantities: labels, epochs, rollouts, replay); the benchmark's hand-built graphs record
the same. A finished run pairs those inputs with what its final eval measured
(``eval/<objective>/avg@k`` of the graph's last eval stage, read from ``metrics_latest``
through the stage's cache key, so a CACHED eval counts once, for the run that computed
it). The fit is bounded least squares (scipy) on the prediction error in accuracy points:

- only constants that move the observed runs' predictions are freed (each moved alone to
  its bounds, and the GRPO efficiency constants also together; the most influential first, at most one fewer than the distinct runs, at
  most ``MAX_FREE``), the rest keep their values;
- a weak pull toward the current values (``PRIOR``, in log-ratio units) keeps constants
  that the data barely identify where they were instead of letting them wander;
- amounts (rollouts and labels at which effects saturate) are fitted on a log scale.

Costs: the measured GPU-hours of every stage that ran (not CACHED) over its estimate give
a time factor per stage kind (measured ratios differ by kind: generation-bound rollouts
and evals are not mis-estimated like training), fitted where a kind has at least
``MIN_KIND_STAGES`` stages, the pooled factor elsewhere; the cost model multiplies each
kind's GPU-hours by its factor.

The fit goes to ``<home>/calibration.json`` (keys ``"outcome"`` and ``"costs"``, read by
``s2d_plan.predict.calibration``; ``"fit"`` says how it was made).

    >>> calibrate("/nonexistent")
    Traceback (most recent call last):
    s2d_plan.errors.S2DError: calibrate needs at least 3 finished runs with a measured final eval and the outcome inputs of their prediction; the history in /nonexistent has 0. Execute graphs compiled by `s2d-plan recommend` (or benchmarks/tinyworld.py) first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s2d_plan.errors import S2DError
from s2d_plan.predict.calibration import load_calibration, write_calibration
from s2d_plan.predict.outcome import OutcomeConstants, Pipeline, SolveRates, predict
from s2d_plan.plan.registry import ModelInfo

MIN_RUNS = 3  # distinct finished runs (with outcome inputs and a measured eval) needed to fit anything
MAX_FREE = 8
PRIOR = 0.02  # weight of the pull toward current values, per unit of log-ratio (in accuracy units)
# constant -> (lower, upper, log scale): what calibrate may move, and within which bounds
FITTABLE: dict[str, tuple[float, float, bool]] = {
    "eta_rl": (1e-3, 1.0, True),
    "eta_size_exp": (0.0, 1.0, False),
    "l_rl": (1.0, 1e6, True),
    "delta_unshaped": (0.0, 0.6, False),
    "l_shape": (1.0, 1e6, True),
    "rho_ref": (0.02, 0.95, False),
    "tau_bridge": (10.0, 1e7, True),
    "f_max": (0.01, 1.0, False),
    "o_max": (0.01, 1.0, False),
    "k_c": (0.0, 0.7, False),
    "replay_value": (0.0, 1.0, False),
    "r_boost": (0.0, 10.0, False),
}
# Constants that are flat one at a time but not together, probed jointly at these values:
# GRPO's efficiency shrinks with size from a 1.7B reference, so on a tiny model eta_rl,
# its size exponent and l_rl each alone move nothing.
GROUPS = ({"eta_rl": 1.0, "eta_size_exp": 0.0, "l_rl": 1.0},)
MIN_KIND_STAGES = 3  # finished stages of one kind needed for its own time factor (else the pooled one)
# what an older calibrate rescaled by its single time factor (per-kind factors replace it)
_LEGACY_SCALED = ("mfu_train", "gen_bandwidth_eff", "gen_compute_eff", "load_gbs", "decode_step_s", "stage_startup_s")


# ---------------------------------------------------------------- what a graph predicted from


def outcome_inputs(student: ModelInfo, rates: SolveRates, p: Pipeline) -> dict[str, Any]:
    """The inputs of one ``predict`` call as JSON (a graph's ``meta["outcome_inputs"]``)."""
    pipe = {f.name: getattr(p, f.name) for f in dataclasses.fields(Pipeline)
            if f.name not in ("teacher", "teacher_rates")}
    out: dict[str, Any] = {"student": _model(student), "rates": _rates(rates), "pipeline": pipe,
                           "teacher": _model(p.teacher) if p.teacher else None,
                           "teacher_rates": _rates(p.teacher_rates) if p.teacher_rates else None}
    return out


def _model(m: ModelInfo) -> dict[str, Any]:
    return m.model_dump(mode="json", exclude={"accuracy"})


def _rates(r: SolveRates) -> dict[str, Any]:
    return {"mean": r.mean, "kappa": r.kappa, "source": r.source, "estimated": r.estimated}


def inputs_from_meta(d: dict[str, Any]) -> tuple[ModelInfo, SolveRates, Pipeline]:
    teacher = ModelInfo(**d["teacher"]) if d.get("teacher") else None
    trates = SolveRates(**d["teacher_rates"]) if d.get("teacher_rates") else None
    return ModelInfo(**d["student"]), SolveRates(**d["rates"]), Pipeline(teacher=teacher, teacher_rates=trates,
                                                                          **d["pipeline"])


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
    seen: set[str] = set()

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for run_id, text in runs:
        try:
            graph = json.loads(text) if text else {}
        except ValueError:
            skip("graph not readable")
            continue
        meta = graph.get("meta") or {}
        if not meta.get("outcome_inputs"):
            skip("no outcome inputs in its graph (not compiled by recommend or the benchmark)")
            continue
        objective = (graph.get("predicted") or {}).get("eval") or meta.get("objective")
        measured = by_run.get(run_id, {})
        # the objective's avg@k from the last stage (graph order) that measured it
        found = None
        for st in graph.get("stages", []):
            k = (st.get("params") or {}).get("k")
            for metric, key_, value in measured.get(st.get("id"), []):
                if metric.startswith(f"eval/{objective}/avg@") and (k is None or metric.endswith(f"@{k}")):
                    found = (key_, value, metric)
        if not objective or found is None:
            skip(f"no eval/{objective}/avg@k measured")
            continue
        if found[0] in seen:
            skip("its final eval was already counted (a cached rerun)")
            continue
        seen.add(found[0])
        student, rates, pipe = inputs_from_meta(meta["outcome_inputs"])
        out.append(Observation(run_id, json.dumps(meta["outcome_inputs"], sort_keys=True),
                               str(meta.get("structure") or graph.get("plan")), found[2], found[1], student, rates, pipe))
    return out, skipped


# ---------------------------------------------------------------- the fit


def _to_x(name: str, value: float) -> float:
    lo, hi, log = FITTABLE[name]
    v = min(max(value, lo), hi)
    return math.log(v) if log else v


def _from_x(name: str, x: float) -> float:
    return math.exp(x) if FITTABLE[name][2] else x


def _bounds(name: str) -> tuple[float, float]:
    lo, hi, log = FITTABLE[name]
    return (math.log(lo), math.log(hi)) if log else (lo, hi)


def rmse(obs: list[Observation], k: OutcomeConstants) -> float:
    return math.sqrt(sum((o.predicted(k) - o.measured) ** 2 for o in obs) / max(len(obs), 1))


def sensitive_constants(obs: list[Observation], k: OutcomeConstants) -> list[tuple[str, float]]:
    """(name, reach), most influential first: reach is the RMS change of the runs' predictions
    when the constant alone moves to either bound. A global probe, not a gradient: at the
    shipped constants GRPO gains on a model far below the reference size are ~0 and flat in
    every GRPO constant, yet a joint move can open them up."""
    base = [o.predicted(k) for o in obs]

    def moved_by(**values: float) -> float:
        moved = replace(k, **values)
        return math.sqrt(sum((o.predicted(moved) - b) ** 2 for o, b in zip(obs, base)) / len(obs))

    reach = {name: max(moved_by(**{name: bound}) for bound in FITTABLE[name][:2]) for name in FITTABLE}
    for group in GROUPS:
        joint = moved_by(**group)
        for name in group:
            reach[name] = max(reach[name], joint)
    return sorted(((n, r) for n, r in reach.items() if r > 1e-3), key=lambda t: -t[1])


def fit_outcome(obs: list[Observation], start: OutcomeConstants) -> tuple[OutcomeConstants, list[str]]:
    """Bounded least squares of the freed constants; returns (constants, names freed)."""
    from scipy.optimize import least_squares

    distinct = len({o.key for o in obs})
    names = [n for n, _ in sensitive_constants(obs, start)][:max(0, min(MAX_FREE, distinct - 1))]
    if not names:
        return start, []
    x0 = [_to_x(n, getattr(start, n)) for n in names]
    lo, hi = zip(*[_bounds(n) for n in names])
    scale = [1.0 if FITTABLE[n][2] else max(abs(v), 0.05) for n, v in zip(names, x0)]

    def constants(x) -> OutcomeConstants:
        return replace(start, **{n: _from_x(n, float(v)) for n, v in zip(names, x)})

    def residuals(x):
        k = constants(x)
        fit = [o.predicted(k) - o.measured for o in obs]
        pull = [PRIOR * (v - v0) / s for v, v0, s in zip(x, x0, scale)]
        return fit + pull

    res = least_squares(residuals, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=400)
    return constants(res.x), names


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


def calibrate(home: str | Path | None = None, min_runs: int = MIN_RUNS) -> dict[str, Any]:
    """Fit, write ``<home>/calibration.json``, and return what was written plus a per-run table."""
    from s2d_plan.paths import resolve_home

    home = resolve_home(home)
    obs, skipped = observations(home)
    if len(obs) < min_runs:
        why = "; ".join(f"{n} run(s): {w}" for w, n in skipped.items())
        raise S2DError(f"calibrate needs at least {min_runs} finished runs with a measured final eval and the "
                       f"outcome inputs of their prediction; the history in {home} has {len(obs)}"
                       + (f" (skipped {why})" if why else "")
                       + ". Execute graphs compiled by `s2d-plan recommend` (or benchmarks/tinyworld.py) first.")
    in_force = load_calibration(home)
    current = in_force.outcome
    fitted, names = fit_outcome(obs, current)
    before, after = rmse(obs, current), rmse(obs, fitted)
    if after > before:  # never store a fit worse than what is in use
        fitted, names, after = current, [], before
    table = [{"run_id": o.run_id, "structure": o.label, "measured": o.measured, "before": o.predicted(current),
              "after": o.predicted(fitted)} for o in obs]
    old = in_force.raw or {}
    outcome = dict(old.get("outcome", {}))
    outcome.update({n: getattr(fitted, n) for n in names})
    cost_fit = fit_costs(home)
    cost_out = _cost_constants(old, cost_fit)
    fit = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "runs": len(obs),
           "metrics": sorted({o.metric for o in obs}), "fitted": names,
           "rmse_before": before, "rmse_after": after, "skipped": skipped,
           "costs": cost_fit}
    doc = {"outcome": outcome, "costs": cost_out, "fit": fit}
    path = write_calibration(home, doc)
    return {**doc, "table": table, "path": str(path)}
