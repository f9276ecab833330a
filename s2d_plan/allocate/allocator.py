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

    >>> from s2d_plan.plan.spec import load_plan
    >>> result = allocate(Context.from_spec(load_plan("plans/budget.yaml")))
    >>> result.best.structure.label
    'probe -> GRPO Qwen3-8B -> FKL->OPD -> Stage 3 GRPO'
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from s2d_plan.allocate.search import MIN_GAIN, Candidate, _Search, optuna_refine, priced, search_random, trial_rows
from s2d_plan.allocate.space import (MIN_STEPS, Allocation, Context, LinearCost, Quantities, Scale, Structure, box,
                             evaluate, pipeline, stage_costs)
from s2d_plan.predict import costs
from s2d_plan.errors import InfeasibleError

__all__ = ["MIN_STEPS", "Allocation", "Context", "Quantities", "Scale", "SearchResult", "Structure", "allocate",
           "default_structure", "evaluate", "pipeline", "random_search", "stage_costs", "structures"]

PROBE_BUDGET_FRACTION = 0.02  # a probe is worth at most this share of the GPU-hours
TOP_STRUCTURES = 4  # structures whose other group sizes are searched too


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
    for sid in sorted(set(pins.steps) & {"probe", "teacher_rollouts", "final_eval"}):
        ctx.notes.append(f"pins.steps.{sid} is ignored: {sid} samples, it has no optimizer steps")
    if pins.teacher == "none":
        usable = []
    elif pins.teacher:
        if pins.teacher not in usable:
            raise InfeasibleError("the plan's pins leave no valid pipeline: " + _pin_conflict(ctx, notes))
        usable = [pins.teacher]
    out: list[Structure] = []
    for name in usable:
        shared = ctx.teachers[name][0].shares_tokenizer(ctx.student)
        bridges = ["fkl+opd", "opd", "fkl"] if shared else ["fkl"]
        if pins.bridge:
            bridges = [b for b in bridges if b == pins.bridge]
        labels_left = ctx.labels - (pins.teacher_labels if pins.teacher_labels is not None else 1)
        # A raw teacher only where Stage 1 cannot happen (no labels, or GRPO on it fits no
        # GPU memory): otherwise a token raw bridge would only be a way to spend labels on
        # an essentially cold student.
        rls = [False] if ctx.labels == 0 else [True] if (pins.teacher_labels or _rl_fits(ctx, name)) else [False]
        for rl in rls:
            for bridge in bridges:
                for stage3 in (False, True):
                    if stage3 and (ctx.labels == 0 or pins.stage3 is False):
                        continue
                    if not stage3 and pins.stage3 is True:
                        continue
                    if rl and stage3 and not ctx.reuse and labels_left < 1:
                        if pins.stage3:
                            raise InfeasibleError(
                                f"labels are short: Stage 3 is pinned on, but Stage 1 takes "
                                f"{ctx.labels - labels_left:,} of the {ctx.labels:,} labels and reuse_labels is "
                                f"off (short by at least 1 label; lower pins.teacher_labels or allow reuse)")
                        continue
                    out.append(Structure(name, rl, bridge, shared, stage3))
    if ctx.labels > 0 and not usable and pins.stage3 is not True:
        out.append(Structure(direct=True))
    if not out and (pins.teacher not in (None, "none") or pins.bridge or pins.stage3):
        raise InfeasibleError("the plan's pins leave no valid pipeline: " + _pin_conflict(ctx, notes))
    if ctx.labels == 0 or not out:
        out.append(Structure())  # nothing worth training: evaluate the student as is
    return out


def _rl_fits(ctx: Context, name: str) -> bool:
    sc = ctx.scale
    return costs.grpo_cost(ctx.teachers[name][0], ctx.gpu, ctx.gpus, sc.prompts_per_step, 8, sc.prompt_len,
                           sc.max_new, sc.prompts_per_step, c=ctx.c).fits


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


@dataclass
class SearchResult:
    best: Allocation
    alternatives: list[Allocation]  # best allocation of each other feasible structure, best first
    baseline: Allocation | None  # direct GRPO on the student (always shown)
    infeasible: dict[str, str]  # structure label -> why it cannot run
    trials: list[dict[str, Any]]
    notes: list[str]
    search: dict[str, Any] = field(default_factory=dict)  # how the search went (counts, Optuna)


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
    state = _LocalState(rng, n_random, record, best_of, infeasible, shortfalls)
    # every structure at the usual group size, then the other group sizes for the best few
    for s in allowed:
        groups = box(ctx, s).groups
        _search_structure(ctx, s, 8 if 8 in groups else groups[0], state)
    ranked = sorted(best_of, key=lambda x: -best_of[x][0].value)
    # the leaders, and every variant of the leader's teacher (the rationale compares them)
    leaders = ranked[:TOP_STRUCTURES] + [x for x in ranked[TOP_STRUCTURES:] if ranked and
                                         (x.teacher, x.teacher_rl) == (ranked[0].teacher, ranked[0].teacher_rl)]
    for s in leaders:
        for group in box(ctx, s).groups:
            if group != best_of[s][1].group:
                _search_structure(ctx, s, group, state)
    if not best_of:
        raise InfeasibleError(_shortfall_message(ctx, shortfalls))
    n_local = len(record)
    before = max(c.value for c, _, _ in best_of.values())
    default = default_structure(ctx, allowed)
    optuna_info = optuna_refine(ctx, default, best_of, record, trials, seed)
    optuna_info["improved_by_points"] = round((max(c.value for c, _, _ in best_of.values()) - before) * 100, 4)
    ranked = sorted(best_of.values(), key=lambda x: -x[0].value)
    finals = [_finalize(ctx, c.structure, c.quantities) for c, _, _ in ranked]
    finals = [a for a in finals if a is not None]
    if not finals:
        raise InfeasibleError(_shortfall_message(ctx, shortfalls))
    finals.sort(key=lambda a: -a.prediction.value)
    top = finals[0].prediction.value
    # where structures tie (the outcome model is flat), the paper's recipe wins the tie
    lead = next((a for a in finals if a.structure == default and a.prediction.value >= top - MIN_GAIN), finals[0])
    finals = [lead] + [a for a in finals if a is not lead]
    best = _maybe_probe(ctx, finals)
    base = _baseline(ctx, rng)
    info = {"structures": len(allowed), "local_evaluations": n_local, "optuna": optuna_info}
    return SearchResult(best, finals[1:], base, infeasible, trial_rows(record), list(dict.fromkeys(ctx.notes)), info)


@dataclass
class _LocalState:
    rng: random.Random
    n_random: int
    record: list[Candidate]
    best_of: dict[Structure, tuple[Candidate, _Search, tuple]]
    infeasible: dict[str, str]
    shortfalls: list[tuple[str, float, str]]  # (budget, short by, sentence)


def _search_structure(ctx: Context, s: Structure, group: int, st: _LocalState) -> None:
    """Local search of one structure at one group size; record why it cannot run if so."""
    s, lc, bad = priced(ctx, s, group)
    if bad:
        sid, est = bad
        usable = ctx.gpu.memory_gb * ctx.c.mem_headroom
        st.infeasible[s.label] = (f"stage {sid} needs {est.need_gb:.1f} GB per GPU with its leanest strategy; "
                                  f"a {ctx.gpu.name} gives {usable:.1f} GB")
        st.shortfalls.append(("GPU memory", est.need_gb - usable, f"{s.label}: {st.infeasible[s.label]}"))
        return
    search = _Search(ctx, s, group, lc)
    u, cand = search.local(st.rng, st.n_random, st.record)
    if not cand.feasible:
        floor = lc(search.raw((u[0], 0, 0, 0, 0)))
        st.infeasible.setdefault(s.label, f"needs at least {floor:.3g} GPU-hours at minimum steps")
        st.shortfalls.append(("GPU-hours", floor - ctx.budget, f"the cheapest allocation ({s.label}) needs "
                              f"{floor:.3g} GPU-hours at minimum steps; the plan has {ctx.budget:.3g}"))
        return
    st.infeasible.pop(s.label, None)
    if s not in st.best_of or cand.value > st.best_of[s][0].value:
        st.best_of[s] = (cand, search, u)


def _shortfall_message(ctx: Context, shortfalls: list[tuple[str, float, str]]) -> str:
    if not shortfalls:
        return "no allocation is possible for this plan"
    kind, short, sentence = min(shortfalls, key=lambda x: (x[0] != "GPU-hours", x[1]))
    unit = "GB per GPU" if kind == "GPU memory" else "GPU-hours"
    return f"no allocation fits: {kind} is short by {short:.3g} {unit}. {sentence[:1].upper()}{sentence[1:]}"


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


def random_search(ctx: Context, n: int, seed: int = 1, project: bool = False) -> Candidate:
    """Uniform random search over the same space: the benchmark's yardstick."""
    return search_random(ctx, structures(ctx), n, seed, project)
