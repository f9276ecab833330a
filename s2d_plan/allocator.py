"""Allocator: which structure, and how much of everything, maximizes predicted accuracy.

The discrete structure (teacher or none, raw or RL-improved, bridge, Stage 3, probe) is
enumerated, never sampled: there are at most a few dozen structures and the rules prune
most of them. Within a structure, quantities (labels to the teacher vs Stage 3, GRPO
epochs and group size, bridge rollouts) are searched cheaply: the cost model is linear in
each quantity once a structure and group size are fixed, so every candidate is projected
onto the GPU-hour budget in closed form and scored by the outcome model (~10 us). Optuna
then refines the best structures with TPE (seeded; constraints through
``trial.set_constraint``; the rule-based default plan enqueued as the first trial).

Rules no allocation breaks (``rule_problems`` checks a compiled graph against them):
no GRPO on the student before a bridge when a usable teacher exists; token-level
distillation (OPD, token forward-KL) only with a shared tokenizer; a teacher is larger
than the student; no stage over GPU memory; GPU-hours within budget; labels spent within
labels available (twice only with ``reuse_labels``); zero labels means no GRPO at all.

    >>> from s2d_plan.spec import load_plan                  # doctest: +SKIP
    >>> result = allocate(Context.from_spec(load_plan("plans/budget.yaml")))  # doctest: +SKIP
    >>> result.best.structure.label                          # doctest: +SKIP
    'GRPO Qwen3-8B -> FKL->OPD -> Stage 3 GRPO'
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from s2d_plan import costs
from s2d_plan.costs import CostConstants, Estimate
from s2d_plan.errors import InfeasibleError
from s2d_plan.outcome import Pipeline, Prediction, SolveRates, estimate_accuracy, predict, signal_yield
from s2d_plan.registry import GPUInfo, ModelInfo

GROUPS = (4, 8, 16)
MAX_EPOCHS = 4.0
MAX_PASSES = 2.0  # bridge rollouts, in passes over the prompt pool
MIN_STEPS = 2  # a stage shorter than this is not a stage
TRIALS_KEPT = 300
# TPE refinement trials at most (~2 ms each here). The local search has already evaluated
# thousands of projected points; measured on the shipped plans TPE rarely adds more than
# a few hundredths of a point, so more trials would only buy time.
OPTUNA_TRIALS_MAX = 64
PROBE_BUDGET_FRACTION = 0.02  # a probe is worth at most this share of the GPU-hours


@dataclass(frozen=True)
class Scale:
    """Sequence lengths and batch sizes: real GPUs vs the tiny CPU setting."""

    tiny: bool
    prompt_len: int
    max_new: int
    prompts_per_step: int  # GRPO and OPD prompts per optimizer step
    fkl_batch: int
    eval_k: int
    eval_default_size: int
    probe_prompts: int
    probe_samples: int

    @staticmethod
    def for_plan(gpu: GPUInfo, student: ModelInfo) -> "Scale":
        if gpu.name == "cpu" or student.params_b < 0.05:
            return Scale(True, 24, 40, 4, 8, 1, 32, 16, 4)
        return Scale(False, 256, 1024, 64, 32, 4, 500, 512, 8)


@dataclass(frozen=True)
class Structure:
    teacher: str | None = None  # a teacher's model name as the plan gives it
    teacher_rl: bool = False  # Stage 1 GRPO on the teacher (False: raw teacher)
    bridge: str | None = None  # "fkl+opd" | "opd" | "fkl"
    fkl_token: bool = True  # token-level forward KL (shared tokenizer) vs sequence-level
    stage3: bool = False  # GRPO on the student after the bridge
    direct: bool = False  # GRPO on the cold student, no teacher
    probe: bool = False

    @property
    def label(self) -> str:
        if self.direct:
            return "direct GRPO on the student"
        if self.teacher is None:
            return "no training (student as is)"
        name = self.teacher.split("/")[-1]
        parts = [f"GRPO {name}" if self.teacher_rl else f"raw {name}"]
        bridge = {"fkl+opd": "FKL->OPD", "opd": "OPD", "fkl": "FKL"}[self.bridge or "fkl"]
        if "fkl" in (self.bridge or "") and not self.fkl_token:
            bridge = bridge.replace("FKL", "sequence-level FKL")
        parts.append(bridge)
        if self.stage3:
            parts.append("Stage 3 GRPO")
        return ("probe -> " if self.probe else "") + " -> ".join(parts)


@dataclass(frozen=True)
class Quantities:
    group_size: int = 8
    teacher_labels: int = 0
    teacher_epochs: float = 0.0
    fkl_rollouts: float = 0.0
    opd_rollouts: float = 0.0
    student_labels: int = 0
    student_epochs: float = 0.0

    def params(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Allocation:
    structure: Structure
    quantities: Quantities
    prediction: Prediction
    costs: dict[str, Estimate]  # stage id -> estimate (final_eval and probe included)
    gpu_hours: float

    @property
    def labels_spent(self) -> int:
        q = self.quantities
        return q.teacher_labels + q.student_labels


@dataclass
class Context:
    """Everything the search needs from a plan, derived once."""

    spec: Any
    student: ModelInfo
    rates: SolveRates
    teachers: dict[str, tuple[ModelInfo, SolveRates]]
    gpu: GPUInfo
    gpus: int
    budget: float
    labels: int
    pool: int
    reuse: bool
    scale: Scale
    c: CostConstants = costs.DEFAULT_CONSTANTS
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def from_spec(spec: Any, evidence: dict[str, SolveRates] | None = None,
                  constants: CostConstants = costs.DEFAULT_CONSTANTS) -> "Context":
        evidence = evidence or {}
        objective = spec.objective.eval
        student = spec.student.info
        gpus = 1 if spec.compute.gpu == "cpu" else spec.compute.gpus
        teachers = {t.model: (t.info, evidence.get(t.model) or estimate_accuracy(t.info, objective))
                    for t in spec.teachers}
        pool = spec.data.prompts.size if spec.data.prompts and spec.data.prompts.size else spec.data.labeled.size
        return Context(spec, student, evidence.get(spec.student.model) or estimate_accuracy(student, objective),
                       teachers, spec.compute.gpu_info, gpus, spec.compute.gpu_hours, spec.data.labeled.size,
                       max(pool, 1), spec.data.reuse_labels, Scale.for_plan(spec.compute.gpu_info, student),
                       constants)

    def eval_problems(self) -> int:
        return sum(e.size or self.scale.eval_default_size for e in self.spec.eval)


# ---------------------------------------------------------------- costs of a candidate


def stage_costs(ctx: Context, s: Structure, q: Quantities) -> dict[str, Estimate]:
    """Exact cost-model estimates for every stage the structure runs."""
    sc, c, gpu, n = ctx.scale, ctx.c, ctx.gpu, ctx.gpus
    out: dict[str, Estimate] = {}
    if s.probe:
        out["probe"] = costs.probe_cost([ctx.student], gpu, n, min(sc.probe_prompts, ctx.labels),
                                        sc.probe_samples, sc.prompt_len, sc.max_new, c)
    if s.teacher:
        t = ctx.teachers[s.teacher][0]
        if s.teacher_rl:
            out["teacher_grpo"] = costs.grpo_cost(t, gpu, n, q.teacher_labels * q.teacher_epochs, q.group_size,
                                                  sc.prompt_len, sc.max_new, sc.prompts_per_step, c=c)
        if "fkl" in (s.bridge or ""):
            out["teacher_rollouts"] = costs.rollout_cost(t, gpu, n, q.fkl_rollouts, sc.prompt_len, sc.max_new, c)
            out["student_fkl"] = costs.fkl_cost(ctx.student, t, gpu, n, q.fkl_rollouts, 1.0, sc.prompt_len,
                                                sc.max_new, s.fkl_token, c)
        if "opd" in (s.bridge or ""):
            out["student_opd"] = costs.opd_cost(ctx.student, t, gpu, n, q.opd_rollouts, sc.prompt_len, sc.max_new,
                                                sc.prompts_per_step, c)
    if s.stage3 or s.direct:
        sid = "student_grpo" if s.stage3 else "direct_grpo"
        out[sid] = costs.grpo_cost(ctx.student, gpu, n, q.student_labels * q.student_epochs, q.group_size,
                                   sc.prompt_len, sc.max_new, sc.prompts_per_step, c=c)
    out["final_eval"] = costs.eval_cost(ctx.student, gpu, n, ctx.eval_problems(), sc.eval_k, sc.prompt_len,
                                        sc.max_new, c)
    return out


def pipeline(ctx: Context, s: Structure, q: Quantities, costs_: dict[str, Estimate] | None = None) -> Pipeline:
    t = ctx.teachers[s.teacher] if s.teacher else (None, None)
    lora = {k: e.strategy.startswith("lora") for k, e in (costs_ or {}).items()}
    return Pipeline(
        teacher=t[0], teacher_rates=t[1],
        teacher_labels=q.teacher_labels if s.teacher_rl else 0, teacher_epochs=q.teacher_epochs,
        fkl_rollouts=q.fkl_rollouts if "fkl" in (s.bridge or "") else 0.0, fkl_token_level=s.fkl_token,
        opd_rollouts=q.opd_rollouts if "opd" in (s.bridge or "") else 0.0,
        student_labels=q.student_labels if (s.stage3 or s.direct) else 0, student_epochs=q.student_epochs,
        group_size=q.group_size, pool=ctx.pool,
        lora_teacher=lora.get("teacher_grpo", False),
        lora_student=any(lora.get(k, False) for k in ("student_fkl", "student_opd", "student_grpo", "direct_grpo")))


def evaluate(ctx: Context, s: Structure, q: Quantities) -> Allocation:
    est = stage_costs(ctx, s, q)
    pred = predict(ctx.student, ctx.rates, pipeline(ctx, s, q, est))
    return Allocation(s, q, pred, est, sum(e.gpu_hours for e in est.values()))


# ---------------------------------------------------------------- structures


def usable_teachers(ctx: Context) -> tuple[list[str], list[str]]:
    """(names of teachers larger than the student, notes about the rest)."""
    names, notes = [], []
    for name, (info, _) in ctx.teachers.items():
        if info.params_b <= ctx.student.params_b:
            notes.append(f"{name} is not larger than the student ({info.params_b:g}B <= "
                         f"{ctx.student.params_b:g}B): not a teacher")
        else:
            names.append(name)
    return names, notes


def structures(ctx: Context) -> list[Structure]:
    """Every structure the rules and the plan's pins allow (probe decided later)."""
    pins = ctx.spec.pins
    usable, notes = usable_teachers(ctx)
    ctx.notes.extend(notes)
    if pins.teacher == "none":
        usable = []
    elif pins.teacher:
        usable = [t for t in usable if t == pins.teacher]
    out: list[Structure] = []
    for name in usable:
        shared = ctx.teachers[name][0].shares_tokenizer(ctx.student)
        bridges = ["fkl+opd", "opd", "fkl"] if shared else ["fkl"]
        if pins.bridge:
            bridges = [b for b in bridges if b == pins.bridge]
        for rl in ([True, False] if ctx.labels > 0 else [False]):
            for bridge in bridges:
                for stage3 in (False, True):
                    if stage3 and (ctx.labels == 0 or pins.stage3 is False):
                        continue
                    if not stage3 and pins.stage3 is True:
                        continue
                    if rl and stage3 and not ctx.reuse and ctx.labels < 2:
                        continue
                    out.append(Structure(name, rl, bridge, shared, stage3))
    if ctx.labels > 0 and not usable and pins.stage3 is not True:
        out.append(Structure(direct=True))
    if not out and (pins.teacher not in (None, "none") or pins.bridge or pins.stage3):
        raise InfeasibleError("the plan's pins leave no valid pipeline: " + _pin_conflict(ctx, notes))
    if ctx.labels == 0 or not out:
        out.append(Structure())  # nothing worth training: evaluate the student as is
    return out


def _pin_conflict(ctx: Context, notes: list[str]) -> str:
    pins = ctx.spec.pins
    if pins.teacher not in (None, "none"):
        info = ctx.teachers[pins.teacher][0]
        if info.params_b <= ctx.student.params_b:
            return f"pinned teacher {pins.teacher} is not larger than the student"
        if pins.bridge in ("opd", "fkl+opd") and not info.shares_tokenizer(ctx.student):
            return (f"bridge {pins.bridge} needs token-level distillation, but {pins.teacher} uses the "
                    f"{info.tokenizer} tokenizer and the student {ctx.student.tokenizer}; pin bridge: fkl "
                    "(sequence-level forward KL on the teacher's text) instead")
    if pins.stage3:
        return "Stage 3 is pinned on, but no usable teacher exists for the bridge it must follow"
    return "; ".join(notes) or "no teacher the pins allow can be used"


def baseline(ctx: Context) -> Structure:
    return Structure(direct=True)


# ---------------------------------------------------------------- quantities


@dataclass(frozen=True)
class Box:
    """Search ranges of one structure's quantities; fixed where pins say so."""

    groups: tuple[int, ...]
    teacher_frac: tuple[float, float]
    teacher_epochs: tuple[float, float]
    fkl_passes: tuple[float, float]
    opd_passes: tuple[float, float]
    student_epochs: tuple[float, float]


def box(ctx: Context, s: Structure) -> Box:
    pins, sc = ctx.spec.pins, ctx.scale
    groups = (pins.group_size,) if pins.group_size else GROUPS
    if sc.tiny and not pins.group_size:
        groups = (4,)
    lo_pass = min(MIN_STEPS * max(sc.prompts_per_step, sc.fkl_batch) / ctx.pool, MAX_PASSES)
    frac = (1.0, 1.0)
    if s.teacher_rl and s.stage3 and not ctx.reuse:
        frac = (0.2, 0.95)
    if pins.teacher_labels is not None and s.teacher_rl:
        f = pins.teacher_labels / max(ctx.labels, 1)
        frac = (f, f)

    def epochs(labels_hint: float, pinned: str) -> tuple[float, float]:
        lo = min(MIN_STEPS * sc.prompts_per_step / max(labels_hint, 1), MAX_EPOCHS)
        if pinned in pins.steps:
            e = pins.steps[pinned] * sc.prompts_per_step / max(labels_hint, 1)
            return (e, e)
        hi = MAX_EPOCHS if not sc.tiny else max(lo, min(MAX_EPOCHS, 6 * sc.prompts_per_step / max(labels_hint, 1)))
        return (lo, hi)

    def passes(pinned: str, per_step: int) -> tuple[float, float]:
        if pinned in pins.steps:
            p = pins.steps[pinned] * per_step / ctx.pool
            return (p, p)
        hi = MAX_PASSES if not sc.tiny else max(lo_pass, min(MAX_PASSES, 6 * per_step / ctx.pool))
        return (lo_pass, hi)

    t_labels = ctx.labels * frac[1]
    s_labels = ctx.labels if (ctx.reuse or not s.teacher_rl) else ctx.labels * (1 - frac[0])
    return Box(groups, frac, epochs(t_labels, "teacher_grpo"), passes("student_fkl", sc.fkl_batch),
               passes("student_opd", sc.prompts_per_step),
               epochs(s_labels, "student_grpo" if s.stage3 else "direct_grpo"))


def quantities(ctx: Context, s: Structure, b: Box, u: tuple[float, ...], group: int) -> Quantities:
    """Map a point ``u`` of the unit cube (frac, t_epochs, fkl, opd, s_epochs) into the box
    (log scale for amounts)."""

    def lin(r, x):
        return r[0] + (r[1] - r[0]) * x

    def log(r, x):
        return r[0] * (r[1] / r[0]) ** x if r[0] > 0 else lin(r, x)

    frac = lin(b.teacher_frac, u[0])
    t_labels = int(round(ctx.labels * frac)) if s.teacher_rl else 0
    if s.teacher_rl and s.stage3 and not ctx.reuse:
        s_labels = ctx.labels - t_labels
    else:
        s_labels = ctx.labels if (s.stage3 or s.direct) else 0
    return Quantities(
        group_size=group, teacher_labels=t_labels, teacher_epochs=log(b.teacher_epochs, u[1]) if t_labels else 0.0,
        fkl_rollouts=ctx.pool * log(b.fkl_passes, u[2]) if "fkl" in (s.bridge or "") else 0.0,
        opd_rollouts=ctx.pool * log(b.opd_passes, u[3]) if "opd" in (s.bridge or "") else 0.0,
        student_labels=s_labels, student_epochs=log(b.student_epochs, u[4]) if s_labels else 0.0)


class LinearCost:
    """GPU-hours of a (structure, group size) as intercept + slope per quantity: exact up
    to rounding of waves and steps, and ~1000x cheaper than the cost model."""

    AMOUNTS = ("teacher_visits", "fkl_rollouts", "opd_rollouts", "student_visits")

    def __init__(self, ctx: Context, s: Structure, group: int):
        def q_of(a: float) -> Quantities:
            return Quantities(group, 1, a, a, a, 1, a)

        one, two = 1000.0, 2000.0
        c1, c2 = stage_costs(ctx, s, q_of(one)), stage_costs(ctx, s, q_of(two))
        self.fixed = sum(2 * c1[k].gpu_hours - c2[k].gpu_hours for k in c1)
        self.slope = {k: (c2[k].gpu_hours - c1[k].gpu_hours) / (two - one) for k in c1}
        self.memory = {k: e for k, e in c1.items()}

    def __call__(self, q: Quantities) -> float:
        amount = {"teacher_grpo": q.teacher_labels * q.teacher_epochs, "teacher_rollouts": q.fkl_rollouts,
                  "student_fkl": q.fkl_rollouts, "student_opd": q.opd_rollouts,
                  "student_grpo": q.student_labels * q.student_epochs,
                  "direct_grpo": q.student_labels * q.student_epochs}
        return self.fixed + sum(slope * amount.get(k, 0.0) for k, slope in self.slope.items())

    def infeasible_stage(self) -> tuple[str, Estimate] | None:
        for k, e in self.memory.items():
            if not e.fits:
                return k, e
        return None


# ---------------------------------------------------------------- search


@dataclass
class Candidate:
    structure: Structure
    quantities: Quantities
    value: float
    gpu_hours: float
    feasible: bool


@dataclass
class SearchResult:
    best: Allocation
    alternatives: list[Allocation]  # best allocation of each other feasible structure, best first
    baseline: Allocation | None  # direct GRPO on the student (always shown)
    infeasible: dict[str, str]  # structure label -> why it cannot run
    trials: list[dict[str, Any]]
    notes: list[str]
    search: dict[str, Any] = field(default_factory=dict)  # how the search went (counts, Optuna)


class _Search:
    """One structure at one group size: unit-cube point -> projected quantities -> value."""

    DIMS = ("u_frac", "u_teacher_epochs", "u_fkl", "u_opd", "u_student_epochs")

    def __init__(self, ctx: Context, s: Structure, group: int, lc: LinearCost):
        self.ctx, self.s, self.group, self.lc = ctx, s, group, lc
        self.box = box(ctx, s)
        dims = []
        if s.teacher_rl and self.box.teacher_frac[0] < self.box.teacher_frac[1]:
            dims.append(0)
        if s.teacher_rl:
            dims.append(1)
        if "fkl" in (s.bridge or ""):
            dims.append(2)
        if "opd" in (s.bridge or ""):
            dims.append(3)
        if s.stage3 or s.direct:
            dims.append(4)
        self.dims = dims

    def raw(self, u: tuple[float, ...]) -> Quantities:
        return quantities(self.ctx, self.s, self.box, u, self.group)

    def project(self, u: tuple[float, ...]) -> tuple[Quantities, float, bool]:
        """Quantities at ``u``, shrunk (amounts only, on the log scale) until they fit."""
        q = self.raw(u)
        cost = self.lc(q)
        if cost <= self.ctx.budget:
            return q, cost, True
        lo, hi = 0.0, 1.0
        for _ in range(14):
            mid = (lo + hi) / 2
            if self.lc(self.raw(self._shrink(u, mid))) <= self.ctx.budget:
                lo = mid
            else:
                hi = mid
        q = self.raw(self._shrink(u, lo))
        cost = self.lc(q)
        return q, cost, cost <= self.ctx.budget

    @staticmethod
    def _shrink(u: tuple[float, ...], f: float) -> tuple[float, ...]:
        return (u[0],) + tuple(x * f for x in u[1:])

    def score(self, u: tuple[float, ...]) -> Candidate:
        q, cost, ok = self.project(u)
        value = predict(self.ctx.student, self.ctx.rates, pipeline(self.ctx, self.s, q, self.lc.memory)).value
        return Candidate(self.s, q, value if ok else -1.0, cost, ok)

    def local(self, rng: random.Random, n_random: int, record: list[Candidate]) -> tuple[tuple[float, ...], Candidate]:
        """Random starts, then coordinate moves of shrinking size on the structure's dims."""
        starts = [(0.8, 0.6, 0.6, 0.6, 0.6)] + [tuple(rng.random() for _ in range(5)) for _ in range(n_random)]
        best_u, best = starts[0], self.score(starts[0])
        record.append(best)
        for u in starts[1:]:
            cand = self.score(u)
            record.append(cand)
            if cand.value > best.value:
                best_u, best = u, cand
        for step in (0.2, 0.08, 0.03, 0.01):
            improved = True
            while improved:
                improved = False
                for d in self.dims:
                    for sign in (1, -1):
                        u = list(best_u)
                        u[d] = min(1.0, max(0.0, u[d] + sign * step))
                        cand = self.score(tuple(u))
                        record.append(cand)
                        if cand.value > best.value + 1e-7:
                            best_u, best, improved = tuple(u), cand, True
        return best_u, best


def _u_of(r: tuple[float, float], value: float) -> float:
    if r[1] <= r[0]:
        return 0.0
    if r[0] > 0 and value > 0:
        return min(1.0, max(0.0, math.log(value / r[0]) / math.log(r[1] / r[0])))
    return 0.5


def default_structure(ctx: Context, allowed: list[Structure]) -> Structure:
    """The rule-based plan (the paper's recipe): the first usable teacher that shares the
    tokenizer, RL on it, FKL->OPD (sequence FKL across tokenizers), Stage 3 when labels
    allow, else the first allowed structure."""
    for s in allowed:
        if s.teacher and s.teacher_rl and s.bridge in ("fkl+opd", "fkl") and (s.fkl_token or s.bridge == "fkl"):
            want_s3 = any(x.stage3 for x in allowed if x.teacher == s.teacher)
            pick = replace(s, stage3=want_s3)
            if pick in allowed:
                return pick
    return allowed[0]


def allocate(ctx: Context, trials: int | None = None, seed: int | None = None) -> SearchResult:
    """Search structures and quantities; raise InfeasibleError when nothing fits."""
    seed = ctx.spec.search.seed if seed is None else seed
    trials = trials or ctx.spec.search.trials
    allowed = structures(ctx)
    rng = random.Random(seed)
    record: list[Candidate] = []
    best_of: dict[Structure, tuple[Candidate, _Search, tuple]] = {}
    infeasible: dict[str, str] = {}
    shortfalls: list[tuple[str, float, str]] = []  # (budget, short by, sentence)
    n_random = 12 if len(allowed) > 6 else 24
    for s in allowed:
        for group in box(ctx, s).groups:
            lc = LinearCost(ctx, s, group)
            bad = lc.infeasible_stage()
            if bad and bad[0] == "student_fkl" and s.fkl_token and s.bridge == "fkl":
                # token-level FKL keeps the teacher resident; sequence-level (its text) does not
                seq = replace(s, fkl_token=False)
                lc_seq = LinearCost(ctx, seq, group)
                if not lc_seq.infeasible_stage():
                    s, lc, bad = seq, lc_seq, None
            if bad:
                sid, est = bad
                usable = ctx.gpu.memory_gb * ctx.c.mem_headroom
                infeasible[s.label] = (f"stage {sid} needs {est.need_gb:.1f} GB per GPU with its leanest strategy; "
                                       f"a {ctx.gpu.name} gives {usable:.1f} GB")
                shortfalls.append(("GPU memory", est.need_gb - usable, f"{s.label}: {infeasible[s.label]}"))
                break
            search = _Search(ctx, s, group, lc)
            u, cand = search.local(rng, n_random, record)
            if not cand.feasible:
                floor = lc(search.raw((u[0], 0, 0, 0, 0)))
                infeasible.setdefault(s.label, f"needs at least {floor:.3g} GPU-hours at minimum steps")
                shortfalls.append(("GPU-hours", floor - ctx.budget,
                                   f"the cheapest allocation ({s.label}) needs {floor:.3g} GPU-hours at minimum "
                                   f"steps; the plan has {ctx.budget:.3g}"))
                continue
            infeasible.pop(s.label, None)
            if s not in best_of or cand.value > best_of[s][0].value:
                best_of[s] = (cand, search, u)
    if not best_of:
        raise InfeasibleError(_shortfall_message(ctx, shortfalls))
    n_local = len(record)
    before = max(c.value for c, _, _ in best_of.values())
    optuna_info = _optuna_refine(ctx, allowed, best_of, record, trials, seed)
    optuna_info["improved_by_points"] = round((max(c.value for c, _, _ in best_of.values()) - before) * 100, 4)
    ranked = sorted(best_of.values(), key=lambda x: -x[0].value)
    finals = [_finalize(ctx, c.structure, c.quantities) for c, _, _ in ranked]
    finals = [a for a in finals if a is not None]
    if not finals:
        raise InfeasibleError(_shortfall_message(ctx, shortfalls))
    finals.sort(key=lambda a: -a.prediction.value)
    best = _maybe_probe(ctx, finals)
    base = _baseline(ctx, rng)
    trial_rows = _trial_rows(record)
    info = {"structures": len(allowed), "local_evaluations": n_local, "optuna": optuna_info}
    return SearchResult(best, finals[1:], base, infeasible, trial_rows, list(dict.fromkeys(ctx.notes)), info)


def _shortfall_message(ctx: Context, shortfalls: list[tuple[str, float, str]]) -> str:
    if not shortfalls:
        return "no allocation is possible for this plan"
    kind, short, sentence = min(shortfalls, key=lambda x: (x[0] != "GPU-hours", x[1]))
    unit = "GB per GPU" if kind == "GPU memory" else "GPU-hours"
    return f"no allocation fits: {kind} is short by {short:.3g} {unit}. {sentence}"


def _finalize(ctx: Context, s: Structure, q: Quantities) -> Allocation | None:
    """Exact costs for the chosen quantities, shrinking amounts if rounding pushed them over."""
    for _ in range(8):
        alloc = evaluate(ctx, s, q)
        if all(e.fits for e in alloc.costs.values()) and alloc.gpu_hours <= ctx.budget:
            return alloc
        f = 0.97 * ctx.budget / max(alloc.gpu_hours, 1e-9)
        q = replace(q, teacher_epochs=q.teacher_epochs * f, fkl_rollouts=q.fkl_rollouts * f,
                    opd_rollouts=q.opd_rollouts * f, student_epochs=q.student_epochs * f)
    return None


def _maybe_probe(ctx: Context, finals: list[Allocation]) -> Allocation:
    """Add a probe when pinned, or when no evidence exists, the top two structures are
    within the prediction band of each other, and the probe costs little."""
    best = finals[0]
    pin = ctx.spec.pins.probe
    if pin is False or ctx.labels == 0:
        return best
    close = len(finals) > 1 and best.prediction.value - finals[1].prediction.value < \
        (best.prediction.high - best.prediction.value)
    no_evidence = not ctx.rates.source.startswith("probe")
    if pin is None and not (close and no_evidence):
        return best
    s = replace(best.structure, probe=True)
    probed = evaluate(ctx, s, best.quantities)
    cost = probed.costs["probe"].gpu_hours
    if pin is None and cost > PROBE_BUDGET_FRACTION * ctx.budget:
        return best
    return _finalize(ctx, s, best.quantities) or best


def _baseline(ctx: Context, rng: random.Random) -> Allocation | None:
    if ctx.labels == 0:
        return None
    s = Structure(direct=True)
    group = ctx.spec.pins.group_size or (4 if ctx.scale.tiny else 8)
    lc = LinearCost(ctx, s, group)
    if lc.infeasible_stage():
        return None
    _, cand = _Search(ctx, s, group, lc).local(rng, 8, [])
    return _finalize(ctx, s, cand.quantities) if cand.feasible else None


def _trial_rows(record: list[Candidate]) -> list[dict[str, Any]]:
    rows = [{"number": i, "structure": c.structure.label, "params": c.quantities.params(),
             "value": round(c.value, 5) if c.feasible else None, "gpu_hours": round(c.gpu_hours, 4),
             "feasible": c.feasible} for i, c in enumerate(record)]
    feasible = sorted((r for r in rows if r["feasible"]), key=lambda r: -r["value"])
    front, best = [], -1.0  # the Pareto front (GPU-hours vs value) is always kept
    for r in sorted(feasible, key=lambda r: (r["gpu_hours"], -r["value"])):
        if r["value"] > best:
            front.append(r)
            best = r["value"]
    spread = feasible[::max(1, len(feasible) // 60)]  # a sample across the whole range
    kept = {r["number"]: r for r in front[:60] + spread[:60] + [r for r in rows if not r["feasible"]][:20]}
    for r in feasible:
        if len(kept) >= TRIALS_KEPT:
            break
        kept.setdefault(r["number"], r)
    return sorted(kept.values(), key=lambda r: r["number"])


def _optuna_refine(ctx: Context, allowed: list[Structure], best_of: dict, record: list[Candidate],
                   trials: int, seed: int) -> dict[str, Any]:
    """TPE over the best few structures' quantities, seeded, the rule-based default first."""
    import optuna  # lazy: ~0.15 s, paid only by recommend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ranked = sorted(best_of.items(), key=lambda kv: -kv[1][0].value)
    default = default_structure(ctx, allowed)
    top = [s for s, _ in ranked[:2]]
    if default in best_of and default not in top:
        top.append(default)
    labels = {s.label: s for s in top}
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    d = default if default in labels.values() else top[0]
    db = box(ctx, d)
    g = 8 if 8 in db.groups else db.groups[0]
    study.enqueue_trial({"structure": d.label, f"group_size[{d.label}]": g, "u_frac": _u_of((0.2, 0.95), 0.8),
                         "u_teacher_epochs": _u_of(db.teacher_epochs, 2.0), "u_fkl": _u_of(db.fkl_passes, 1.0),
                         "u_opd": _u_of(db.opd_passes, 1.0), "u_student_epochs": _u_of(db.student_epochs, 2.0)})
    for s in top:
        cand, search, u = best_of[s]
        study.enqueue_trial({"structure": s.label, f"group_size[{s.label}]": search.group,
                             **dict(zip(_Search.DIMS, u))})
    searches: dict[tuple[Structure, int], _Search] = {}
    n = max(8, min(trials, OPTUNA_TRIALS_MAX))
    for _ in range(n):
        trial = study.ask()
        s = labels[trial.suggest_categorical("structure", list(labels))]
        group = trial.suggest_categorical(f"group_size[{s.label}]", list(box(ctx, s).groups))
        u = tuple(trial.suggest_float(name, 0.0, 1.0) for name in _Search.DIMS)
        key = (s, group)
        if key not in searches:
            searches[key] = _Search(ctx, s, group, LinearCost(ctx, s, group))
        search = searches[key]
        q = search.raw(u)
        cost = search.lc(q)
        value = predict(ctx.student, ctx.rates, pipeline(ctx, s, q, search.lc.memory)).value
        trial.set_constraint("gpu_hours_over_budget", cost - ctx.budget)
        study.tell(trial, value)
        feasible = cost <= ctx.budget
        record.append(Candidate(s, q, value if feasible else -1.0, cost, feasible))
        if feasible and value > best_of[s][0].value:
            best_of[s] = (record[-1], search, u)
    first = study.trials[0]
    return {"trials": n, "sampler": "TPESampler", "seed": seed, "structures": list(labels),
            "first_trial": {"structure": first.params.get("structure"), "enqueued": "rule-based default"}}


def random_search(ctx: Context, n: int, seed: int = 1) -> Candidate:
    """Uniform random search over the same space (structures x group x unit cube), no
    projection: the benchmark's yardstick for the allocator."""
    rng = random.Random(seed)
    allowed = structures(ctx)
    cache: dict[tuple[Structure, int], _Search] = {}
    best = Candidate(Structure(), Quantities(), -1.0, 0.0, False)
    for _ in range(n):
        s = rng.choice(allowed)
        group = rng.choice(box(ctx, s).groups)
        if (s, group) not in cache:
            cache[(s, group)] = _Search(ctx, s, group, LinearCost(ctx, s, group))
        search = cache[(s, group)]
        if search.lc.infeasible_stage():
            continue
        q = search.raw(tuple(rng.random() for _ in range(5)))
        cost = search.lc(q)
        if cost > ctx.budget:
            continue
        value = predict(ctx.student, ctx.rates, pipeline(ctx, s, q, search.lc.memory)).value
        if value > best.value:
            best = Candidate(s, q, value, cost, True)
    return best
