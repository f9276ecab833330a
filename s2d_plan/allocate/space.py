"""The allocator's search space: structures, quantities, and what a candidate costs.

A ``Structure`` is the discrete shape of a pipeline (teacher, raw or RL-improved, bridge,
Stage 3, probe); ``Quantities`` are its continuous amounts (labels per stage, epochs,
group size, bridge rollouts, OPD's batch). ``stage_costs`` prices a candidate with the cost
model; ``LinearCost`` is the same, linearized per (structure, group size; OPD per batch)
for the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from s2d_plan.plan.registry import GPUInfo, ModelInfo
from s2d_plan.predict import costs
from s2d_plan.predict.costs import CostConstants, Estimate
from s2d_plan.predict.outcome import OutcomeConstants, Pipeline, Prediction, SolveRates, estimate_accuracy, predict
from s2d_plan.predict.posterior import Posterior, default_posterior

GROUPS = (4, 8, 16)
MAX_EPOCHS = 4.0
MAX_PASSES = 2.0  # bridge rollouts, in passes over the prompt pool
MIN_STEPS = 2  # a stage shorter than this is not a stage (tiny CPU plans)
# The shortest training stage worth planning on real GPUs: a 2-step GRPO or a 3-step OPD
# measures nothing but noise (and pays a model load for it).
USEFUL_STEPS = 10


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
    def for_plan(gpu: GPUInfo, student: ModelInfo, completion_tokens: int | None = None) -> Scale:
        if gpu.name == "cpu" or student.params_b < 0.05:
            # eval: sampled avg@4 at T=1 (greedy is also reported): tiny models' greedy
            # accuracy sits at its ceiling (93-98% in tinyworld), where no pipeline differs
            scale = Scale(True, 24, 40, 4, 8, 4, 32, 16, 4)
        else:
            scale = Scale(False, 256, 1024, 64, 32, 4, 500, 512, 8)
        return replace(scale, max_new=completion_tokens) if completion_tokens else scale


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
        probe = "probe -> " if self.probe else ""
        if self.direct:
            return probe + "direct GRPO on the student"
        if self.teacher is None:
            return probe + "no training (student as is)"
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
    opd_batch: int = 0  # OPD sequences (= prompts) per optimizer step; 0: the scale's default

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
    posterior: Posterior | None = None  # over the outcome constants; None: the shipped one
    notes: list[str] = field(default_factory=list)

    @property
    def k(self) -> OutcomeConstants:
        """The constants the search scores with: the posterior's mode."""
        return self.post.mode

    @property
    def post(self) -> Posterior:
        if self.posterior is None:
            self.posterior = default_posterior()
        return self.posterior

    @property
    def min_steps(self) -> int:
        return MIN_STEPS if self.scale.tiny else USEFUL_STEPS

    @staticmethod
    def from_spec(spec: Any, evidence: dict[str, SolveRates] | None = None,
                  constants: CostConstants = costs.DEFAULT_CONSTANTS,
                  posterior: Posterior | None = None) -> Context:
        evidence = evidence or {}
        objective = spec.objective.eval
        student = spec.student.info
        gpus = 1 if spec.compute.gpu == "cpu" else spec.compute.gpus
        teachers = {t.model: (t.info, evidence.get(t.model) or estimate_accuracy(t.info, objective))
                    for t in spec.teachers}
        pool = spec.data.prompts.size if spec.data.prompts and spec.data.prompts.size else spec.data.labeled.size
        return Context(spec, student, evidence.get(spec.student.model) or estimate_accuracy(student, objective),
                       teachers, spec.compute.gpu_info, gpus, spec.compute.gpu_hours, spec.data.labeled.size,
                       max(pool, 1), spec.data.reuse_labels, Scale.for_plan(spec.compute.gpu_info, student, spec.data.completion_tokens),
                       constants, posterior)

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
                                                q.opd_batch or sc.prompts_per_step, c)
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
        lora_student=any(lora.get(k, False) for k in ("student_fkl", "student_opd", "student_grpo", "direct_grpo")),
        completion_tokens=None if ctx.scale.tiny else ctx.scale.max_new)


def stage_steps(ctx: Context, s: Structure, q: Quantities) -> dict[str, float]:
    """Optimizer steps of each training stage the structure runs (before rounding)."""
    sc = ctx.scale
    out = {}
    if s.teacher_rl:
        out["teacher_grpo"] = q.teacher_labels * q.teacher_epochs / sc.prompts_per_step
    if "fkl" in (s.bridge or ""):
        out["student_fkl"] = q.fkl_rollouts / sc.fkl_batch
    if "opd" in (s.bridge or ""):
        out["student_opd"] = q.opd_rollouts / sc.prompts_per_step
    if s.stage3 or s.direct:
        out["student_grpo" if s.stage3 else "direct_grpo"] = q.student_labels * q.student_epochs / sc.prompts_per_step
    return out


def too_small(ctx: Context, s: Structure, q: Quantities) -> str | None:
    """The first training stage below a useful size, or None."""
    for sid, steps in stage_steps(ctx, s, q).items():
        if steps < ctx.min_steps - 1e-6:
            return sid
    return None


def evaluate(ctx: Context, s: Structure, q: Quantities) -> Allocation:
    est = stage_costs(ctx, s, q)
    pred = predict(ctx.student, ctx.rates, pipeline(ctx, s, q, est), ctx.k)
    return Allocation(s, q, pred, est, sum(e.gpu_hours for e in est.values()))


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
    opd_batches: tuple[int, ...] = ()  # the OPD batch ladder, smallest first


def opd_batches(ctx: Context) -> tuple[int, ...]:
    """OPD batch sizes to search: from GRPO's prompts per step up to the sequences a GRPO
    step generates at the largest group size (64..1024 on GPUs), doubling, each a multiple
    of the stage's GPUs. A bigger batch keeps vLLM's decode batches full (cheaper per
    sequence) and takes fewer optimizer steps. Tiny CPU plans keep the scale's batch."""
    sc = ctx.scale
    if sc.tiny:
        return (sc.prompts_per_step,)
    lo, hi = sc.prompts_per_step, sc.prompts_per_step * max(GROUPS)
    ladder, b = [], lo
    while b <= hi:
        ladder.append(-(-b // ctx.gpus) * ctx.gpus)
        b *= 2
    return tuple(dict.fromkeys(ladder))


def box(ctx: Context, s: Structure) -> Box:
    pins, sc = ctx.spec.pins, ctx.scale
    groups = (pins.group_size,) if pins.group_size else GROUPS
    if sc.tiny and not pins.group_size:
        groups = (4,)
    lo_pass = min(ctx.min_steps * max(sc.prompts_per_step, sc.fkl_batch) / ctx.pool, MAX_PASSES)
    frac = (1.0, 1.0)
    if s.teacher_rl and s.stage3 and not ctx.reuse:
        least = ctx.min_steps * sc.prompts_per_step / (MAX_EPOCHS * max(ctx.labels, 1))  # share a useful stage needs
        frac = (max(0.2, least), min(0.95, 1 - least))
    if pins.teacher_labels is not None and s.teacher_rl:
        f = pins.teacher_labels / max(ctx.labels, 1)
        frac = (f, f)

    def epochs(labels_hint: float, pinned: str) -> tuple[float, float]:
        lo = min(ctx.min_steps * sc.prompts_per_step / max(labels_hint, 1), MAX_EPOCHS)
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
               epochs(s_labels, "student_grpo" if s.stage3 else "direct_grpo"), opd_batches(ctx))


def quantities(ctx: Context, s: Structure, b: Box, u: tuple[float, ...], group: int) -> Quantities:
    """Map a point ``u`` of the unit cube (frac, t_epochs, fkl, opd, s_epochs[, opd_batch])
    into the box (log scale for amounts; the OPD batch along its ladder, the largest when
    ``u`` has no sixth coordinate, never more than a MIN_STEPS-th of the OPD rollouts)."""

    def lin(r, x):
        return r[0] + (r[1] - r[0]) * x

    def log(r, x):
        return r[0] * (r[1] / r[0]) ** x if r[0] > 0 else lin(r, x)

    frac = lin(b.teacher_frac, u[0])
    t_labels = int(round(ctx.labels * frac)) if s.teacher_rl else 0
    if s.teacher_rl and s.stage3 and not ctx.reuse:
        t_labels = min(max(t_labels, 1), ctx.labels - 1)  # both stages keep at least one label
        s_labels = ctx.labels - t_labels
    else:
        s_labels = ctx.labels if (s.stage3 or s.direct) else 0
    opd = ctx.pool * log(b.opd_passes, u[3]) if "opd" in (s.bridge or "") else 0.0
    batch = 0
    if opd and b.opd_batches:
        i = round((u[5] if len(u) > 5 else 1.0) * (len(b.opd_batches) - 1))
        while i > 0 and b.opd_batches[i] * MIN_STEPS > opd:
            i -= 1
        batch = b.opd_batches[i]
    pinned_opd = ctx.spec.pins.steps.get("student_opd") if "opd" in (s.bridge or "") else None
    if pinned_opd:  # a pinned step count holds at whatever batch is searched: steps x batch sequences
        opd = float(pinned_opd * (batch or ctx.scale.prompts_per_step))
    return Quantities(
        group_size=group, teacher_labels=t_labels, teacher_epochs=log(b.teacher_epochs, u[1]) if t_labels else 0.0,
        fkl_rollouts=ctx.pool * log(b.fkl_passes, u[2]) if "fkl" in (s.bridge or "") else 0.0,
        opd_rollouts=opd, opd_batch=batch,
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
        self.intercept = {k: 2 * c1[k].gpu_hours - c2[k].gpu_hours for k in c1}
        self.fixed = sum(self.intercept.values())
        self.slope = {k: (c2[k].gpu_hours - c1[k].gpu_hours) / (two - one) for k in c1}
        self.memory = {k: e for k, e in c1.items()}
        self._ctx, self._s, self._q = ctx, s, q_of(one)
        self._opd: dict[int, tuple[float, float]] = {}

    def opd_line(self, batch: int) -> tuple[float, float]:
        """(intercept, slope per sequence) of the OPD stage at this batch, fitted over
        whole steps (4 and 8 of them) so that wave rounding does not bend it."""
        if batch not in self._opd:
            a1, a2 = 4.0 * batch, 8.0 * batch
            e1, e2 = (stage_costs(self._ctx, self._s, replace(self._q, opd_rollouts=a, opd_batch=batch))["student_opd"]
                      for a in (a1, a2))
            slope = (e2.gpu_hours - e1.gpu_hours) / (a2 - a1)
            self._opd[batch] = (e1.gpu_hours - slope * a1, slope)
        return self._opd[batch]

    def __call__(self, q: Quantities) -> float:
        amount = {"teacher_grpo": q.teacher_labels * q.teacher_epochs, "teacher_rollouts": q.fkl_rollouts,
                  "student_fkl": q.fkl_rollouts, "student_opd": q.opd_rollouts,
                  "student_grpo": q.student_labels * q.student_epochs,
                  "direct_grpo": q.student_labels * q.student_epochs}
        total = self.fixed + sum(slope * amount.get(k, 0.0) for k, slope in self.slope.items())
        if q.opd_batch and "student_opd" in self.slope:  # the OPD stage at its own batch
            fixed, slope = self.opd_line(q.opd_batch)
            total += fixed - self.intercept["student_opd"] + (slope - self.slope["student_opd"]) * q.opd_rollouts
        return total

    def infeasible_stage(self) -> tuple[str, Estimate] | None:
        for k, e in self.memory.items():
            if not e.fits:
                return k, e
        return None
