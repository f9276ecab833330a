"""The pure half of adaptive execution: what to pilot, how a pilot is built, what it
measured, and what it changes. No run happens here (``session`` runs them).

- **Candidates** are the allocator's best allocation of each structure, ranked by their
  predictive distributions. A candidate is piloted when knowing its outcome could change
  the decision: its value of information is the expected amount by which it would beat
  the current pick, ``E[max(X_j - X_pick, 0)]`` over paired posterior draws.
- **A pilot** is the first training stage a candidate runs, short, then an eval on
  labels held out of all training. Candidates that begin with the same stage (every
  pipeline through the RL-improved teacher) share one pilot. Successive halving: each
  round doubles the steps of the pilots still in the race, continuing from the previous
  round's checkpoint, and the lower half (by the updated prediction) leaves the race.
- **Evidence**: each pilot measurement is a datum for the outcome posterior (GRPO on the
  student or on the teacher, or a short bridge), so the outcome model's saturating forms,
  refitted, extrapolate the curve to the full budget; a ScaleRL-style sigmoid in compute
  (Khatri et al. 2025, arXiv 2510.13786) fitted to the same curve is shown beside it.
- **Continuation**: the winner's first stage continues from its pilot's last checkpoint
  (the pilot stages sit in the final graph unchanged, so the cache serves them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from s2d_plan.allocate.choice import with_predictive
from s2d_plan.allocate.space import Allocation, Context, Structure, pipeline
from s2d_plan.errors import ConfigurationError
from s2d_plan.predict.outcome import Pipeline, SolveRates
from s2d_plan.predict.posterior import Datum, Posterior, eval_sd, predictive

VOI_MIN = 0.0005  # below a twentieth of a point no pilot is worth its process start-ups
MIN_TRAIN_LABELS = 8  # labels left for training after the holdout
HOLDOUT_EVAL = "holdout"
FIRST_STAGE = {"student": "direct_grpo", "teacher": "teacher_grpo", "bridge": "student_opd"}


def holdout_size(spec: Any) -> int:
    """Labels held out to score pilots (the plan's ``adaptive.holdout``, or an eighth of
    the labels between 16 and 128); a clear error when too few labels remain to train."""
    labels = spec.data.labeled.size
    want = spec.adaptive.holdout or min(128, max(16, labels // 8))
    if labels - want < MIN_TRAIN_LABELS:
        raise ConfigurationError(f"adaptive execution scores pilots on labels held out of training: {labels:,} labels "
                        f"with a holdout of {want} leave {max(labels - want, 0)} to train on (need at least "
                        f"{MIN_TRAIN_LABELS}). Give more labels, a smaller adaptive.holdout, or run without "
                        "--adaptive")
    return want


def training_spec(spec: Any, holdout: int) -> Any:
    """The plan as the allocator sees it during adaptive execution: the last ``holdout``
    labels are not there to be spent."""
    data = spec.data
    labeled = data.labeled.model_copy(update={"size": data.labeled.size - holdout})
    out = spec.model_copy(update={"data": data.model_copy(update={"labeled": labeled})})
    out._base_dir = spec._base_dir
    return out


def group_of(s: Structure, teachers: list[str] | None = None) -> str | None:
    """Which pilot a structure shares: its first training stage (None: nothing to pilot).
    ``teachers``: the plan's teacher names; a teacher after the first gets its index."""
    n = (teachers or [s.teacher]).index(s.teacher) if s.teacher in (teachers or [s.teacher]) else 0
    tag = str(n) if n else ""
    if s.direct:
        return "student"
    if s.teacher and s.teacher_rl:
        return "teacher" + tag
    if s.teacher and "opd" in (s.bridge or ""):
        return "bridge" + tag
    return None  # no training, or a sequence-level bridge (no short prefix to pilot)


def continues(s: Structure, group: str | None) -> bool:
    """Whether a structure's first stage is the group's pilot continued (so it can start
    from the pilot's checkpoint): a raw bridge only when it is OPD alone."""
    kind = kind_of(group or "")
    return bool(group) and ((kind == "student" and s.direct) or (kind == "teacher" and s.teacher_rl) or
                            (kind == "bridge" and not s.teacher_rl and s.bridge == "opd"))


def kind_of(group: str) -> str:
    return group.rstrip("0123456789")


def short(name: str) -> str:
    """A model name as a decision line shows it (its last path part)."""
    return name.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Option:
    alloc: Allocation
    voi: float  # expected points (as a fraction) by which it would beat the current pick

    @property
    def label(self) -> str:
        return self.alloc.structure.label

    def row(self) -> dict[str, Any]:
        p = self.alloc.prediction
        return {"label": self.label, "median": p.median, "low": p.low,
                "high": p.high, "mean": p.mean, "p_best": p.p_best, "voi": round(self.voi, 5),
                "gpu_hours": round(self.alloc.gpu_hours, 5)}


def options(ctx: Context, finals: list[Allocation], max_n: int) -> list[Option]:
    """The candidates in the race, the pick first: each with its value of information."""
    seen, allocs = set(), []
    for a in finals:
        if a.structure.label not in seen:
            seen.add(a.structure.label)
            allocs.append(a)
    allocs = with_predictive(ctx, allocs)[:max_n]
    # What a pilot can teach: the constants, and the model's own error on each candidate
    # (sigma_model, independent per candidate); not the seed noise of the final run.
    draws = predictive(ctx.post, ctx.student, ctx.rates, [pipeline(ctx, a.structure, a.quantities, a.costs)
                                                          for a in allocs], inputs=False)
    rng = np.random.default_rng(len(allocs))
    draws = draws + rng.standard_normal(draws.shape) * ctx.post.mode.sigma_model
    voi = np.maximum(draws - draws[:, :1], 0.0).mean(axis=0)
    return [Option(a, float(v)) for a, v in zip(allocs, voi)]


def pilot_cost(ctx: Context, alloc: Allocation, share: float) -> float:
    """What the pilots cost the pick, in accuracy: its prediction (posterior mode) at the
    full budget minus at the budget the pilots leave."""
    from s2d_plan.predict.outcome import predict

    q = alloc.quantities
    f = 1 - share
    less = replace(q, teacher_epochs=q.teacher_epochs * f, fkl_rollouts=q.fkl_rollouts * f,
                   opd_rollouts=q.opd_rollouts * f, student_epochs=q.student_epochs * f)
    full = predict(ctx.student, ctx.rates, pipeline(ctx, alloc.structure, q, alloc.costs), ctx.k).value
    return full - predict(ctx.student, ctx.rates, pipeline(ctx, alloc.structure, less, alloc.costs), ctx.k).value


def worth_piloting(opts: list[Option], cost: float) -> list[Option]:
    """The pick and every candidate whose pilot is expected to gain more than the pilots
    cost: value of information above ``cost`` (and above a floor of VOI_MIN)."""
    return [o for i, o in enumerate(opts) if i == 0 or o.voi >= max(cost, VOI_MIN)]


# ---------------------------------------------------------------- pilot stages


def _first_stage(compiled: list[Any], group: str) -> dict[str, Any]:
    sid = FIRST_STAGE[kind_of(group)]
    st = next(s for s in compiled if s.id == sid)
    return json.loads(st.model_dump_json())


def pilot_stages(compiled: list[Any], group: str, student_path: str, steps: list[int]) -> list[dict[str, Any]]:
    """Stage dicts of a group's pilot rounds: round r adds ``steps[r]`` optimizer steps,
    continuing from round r-1. The same inputs give the same dicts (and cache keys)."""
    base = _first_stage(compiled, group)
    out: list[dict[str, Any]] = []
    done = 0
    for r, n in enumerate(steps):
        d = json.loads(json.dumps(base))
        d["id"] = f"pilot_{group}_{r}"
        d["params"].update(steps=n, save_steps=max(n // 2, 1))
        if r:
            d["policy"], d["needs"] = f"@pilot_{group}_{r - 1}", [f"pilot_{group}_{r - 1}"]
        elif kind_of(group) == "bridge":
            d["policy"], d["needs"] = student_path, []
        if d["data"].get("prompts"):
            per = int(d["params"]["prompts_per_step"])
            d["data"]["prompts"].update(offset=int(d["data"]["prompts"].get("offset") or 0) + done * per,
                                        count=n * per)
        if d.get("estimated"):  # the cost model's figure for these steps (a start-up is not in it)
            d["estimated"] = dict(d["estimated"], gpu_hours=round(d["estimated"]["gpu_hours"] * n /
                                                                   max(int(base["params"]["steps"]), 1), 6))
        out.append(d)
        done += n
    return out


def holdout_eval(sid: str, policy: str, needs: list[str], template: dict[str, Any], source: dict[str, Any],
                 offset: int, size: int) -> dict[str, Any]:
    """An eval of ``policy`` on the held-out labels (rows [offset, offset + size))."""
    ev = {"name": HOLDOUT_EVAL, "source": source["source"], "problem_field": source["problem_field"],
          "answer_field": source["answer_field"], "offset": offset, "size": size}
    if source.get("split"):
        ev["split"] = source["split"]
    params = dict(template["params"], greedy=False)
    return {"id": sid, "kind": "eval", "policy": policy, "needs": needs, "data": {"eval": [ev]}, "params": params,
            "resources": template.get("resources", {"gpus": 1})}


def splice(final: list[dict[str, Any]], pilots: list[dict[str, Any]], group: str,
           min_steps: int) -> list[dict[str, Any]]:
    """The final graph's stages with the winner's first stage continuing its pilot: the
    pilot stages first (unchanged, so they are cached), then the remaining steps; a stage
    the pilot already finished is dropped and its readers read the pilot instead."""
    sid, last = FIRST_STAGE[kind_of(group)], pilots[-1]["id"]
    done = sum(int(p["params"]["steps"]) for p in pilots)
    out = [json.loads(json.dumps(p)) for p in pilots]
    for d in final:
        if d["id"] != sid:
            out.append(d)
            continue
        left = int(d["params"]["steps"]) - done
        if left < min_steps:
            return [json.loads(json.dumps(p)) for p in pilots] + [_reading(x, sid, last) for x in final
                                                                   if x["id"] != sid]
        d = dict(d, policy="@" + last, needs=sorted(set(d["needs"]) - {sid} | {last}))
        d["params"] = dict(d["params"], steps=left, save_steps=max(left // 4, 1))
        if d["data"].get("prompts"):
            per = int(d["params"]["prompts_per_step"])
            d["data"] = dict(d["data"], prompts=dict(d["data"]["prompts"], offset=done * per, count=left * per))
        out.append(d)
    return out


def _reading(d: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    d = json.loads(json.dumps(d).replace(f'"@{old}"', f'"@{new}"'))
    d["needs"] = sorted({new if n == old else n for n in d["needs"]})
    return d


# ---------------------------------------------------------------- evidence


def finals_of(result: Any) -> list[Allocation]:
    """Every allocation a search result ranks: the pick, the other structures, direct GRPO."""
    return [result.best] + result.alternatives + ([result.baseline] if result.baseline else [])


def measured_of(trail: list[Any]) -> dict[str, float]:
    """Each pilot group's latest holdout accuracy, from the session's ``pilot`` decisions."""
    acc: dict[str, float] = {}
    for d in trail:
        if d.kind == "pilot":
            acc.update(d.evidence.get("accuracy") or {})
    return acc


def refs_of(trail: list[Any]) -> dict[str, float]:
    """Holdout accuracy of the untrained models, as the session's first pilot round measured it."""
    return dict(next((d.evidence["refs"] for d in trail if d.kind == "pilot" and d.evidence.get("refs")), {}))


def datum(ctx: Context, group: str, teacher: str | None, pilot: dict[str, Any], steps: int, acc: float,
          refs: dict[str, float], problems: int) -> Datum:
    """A pilot measurement as evidence for the outcome posterior; ``refs``: holdout
    accuracy of the untrained models (the level the gain is measured from)."""
    p = pilot["params"]
    sd = eval_sd(acc, problems)
    name = f"pilot {group} {steps} steps"
    if kind_of(group) in ("student", "teacher"):
        labels = int(pilot["data"]["labeled"]["count"])
        q = Pipeline(student_labels=labels, student_epochs=steps * int(p["prompts_per_step"]) / max(labels, 1),
                     group_size=int(p["num_generations"]))
        model = ctx.student if group == "student" else ctx.teachers[teacher][0]
        base = refs["student" if group == "student" else teacher]
        return Datum(name, model, SolveRates(base, source="pilot holdout"), q, acc, sd, "pilot")
    t_info = ctx.teachers[teacher][0]
    q = Pipeline(teacher=t_info, teacher_rates=SolveRates(refs[teacher], source="pilot holdout"),
                 opd_rollouts=steps * int(p["prompts_per_step"]), pool=ctx.pool)
    return Datum(name, ctx.student, SolveRates(refs["student"], source="pilot holdout"), q, acc, sd, "pilot")


# The speed constant each pilot measures: GRPO pilots (student or teacher) the labels to
# saturation of RL gains, bridge pilots the rollouts to saturation of distillation.
SPEED = {"student": "l_rl", "teacher": "l_rl", "bridge": "tau_bridge"}
MAX_LOG_FACTOR = 14.0  # a speed-up up to e^14 (~1.2e6): tiny CPU models vs the paper's 1.7B


def local_speeds(post: Posterior, data: list[Datum]) -> dict[str, dict[str, float]]:
    """Per speed constant, the factor that makes the posterior's mode fit this plan's
    pilots (a plan-local calibration: the closed forms were fitted at 1.7B-8B, and a
    plan far from there can learn 10^4 times faster or slower). Each is a bounded 1-D
    least-squares fit in log space; the model's own saturating forms then carry the
    pilots' curves to the full budget."""
    from scipy.optimize import minimize_scalar

    from s2d_plan.predict.outcome import predict

    out = {}
    for const in sorted(set(SPEED.values())):
        ds = [d for d in data if SPEED.get(kind_of(d.name.split()[1])) == const]
        if not ds:
            continue
        base = getattr(post.mode, const)

        def loss(log_f: float) -> float:  # noqa: B023 (called within this iteration only)
            k = replace(post.mode, **{const: base / math.exp(log_f)})  # noqa: B023
            return sum(((predict(d.student, d.rates, d.pipeline, k).value - d.measured) / d.sd) ** 2 for d in ds)  # noqa: B023

        grid = np.linspace(-MAX_LOG_FACTOR, MAX_LOG_FACTOR, 113)
        losses = np.array([loss(g) for g in grid])
        if loss(0.0) - losses.min() < 1.0:
            continue  # no change improves the fit by one sd (chi-square by 1): the pilots do not ask for one
        near = np.flatnonzero(losses <= losses.min() + 1e-9)
        start = float(grid[near[np.argmin(np.abs(grid[near]))]])  # of equal fits, the smallest change
        step = grid[1] - grid[0]
        best = minimize_scalar(loss, bounds=(start - step, start + step), method="bounded").x
        out[const] = {"factor": float(math.exp(best)), "pilots": len(ds),
                      "rmse_before": math.sqrt(loss(0.0) / len(ds)), "rmse_after": math.sqrt(loss(best) / len(ds))}
    return out


def rescaled(post: Posterior, speeds: dict[str, dict[str, float]]) -> Posterior:
    """The posterior with each speed constant divided by its local factor (every draw
    moved alike, so the uncertainty the evidence left is kept)."""
    mean, samples, base = list(post.mean_x), [list(r) for r in post.samples_x], post.base
    for const, fit in speeds.items():
        shift = math.log(fit["factor"])
        if const in post.names:
            i = post.names.index(const)
            mean[i] -= shift
            for r in samples:
                r[i] -= shift
        else:
            base = replace(base, **{const: getattr(base, const) / fit["factor"]})
    return replace(post, mean_x=tuple(mean), samples_x=tuple(tuple(r) for r in samples), base=base,
                   info=dict(post.info, local_speeds=speeds))


def sigmoid_curve(points: list[tuple[float, float]], r0: float, at: float) -> dict[str, float] | None:
    """ScaleRL's saturating form R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B), fitted to
    (compute, accuracy) points (B held at 1 with three points, free with more), evaluated
    at ``at``; None with fewer than three points (two would fit any asymptote exactly)."""
    if len(points) < 3:
        return None
    from scipy.optimize import least_squares

    c = np.array([x for x, _ in points], float)
    y = np.array([v for _, v in points], float)
    free_b = len(points) >= 4

    def curve(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        a, log_mid = theta[0], theta[1]
        b = theta[2] if free_b else 1.0
        return r0 + (a - r0) / (1 + (math.exp(log_mid) / x) ** b)

    x0 = [min(max(y.max(), r0) + 0.05, 1.0), math.log(c.mean())] + ([1.0] if free_b else [])
    lo = [min(r0, y.min()) - 1e-6, math.log(c.min()) - 8] + ([0.2] if free_b else [])
    hi = [1.0, math.log(c.max()) + 8] + ([4.0] if free_b else [])
    fit = least_squares(lambda t: curve(t, c) - y, np.clip(x0, lo, hi), bounds=(lo, hi))
    return {"asymptote": float(fit.x[0]), "c_mid": float(math.exp(fit.x[1])),
            "exponent": float(fit.x[2]) if free_b else 1.0, "at": float(at),
            "predicted": float(curve(fit.x, np.array([at]))[0])}
