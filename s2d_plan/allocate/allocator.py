"""Allocator: which structure, and how much of everything, maximizes expected accuracy.

The discrete structure (teacher or none, raw or RL-improved, bridge, Stage 3, probe) is
enumerated, never sampled: there are at most a few dozen. Within a structure, quantities
(labels to the teacher vs Stage 3, GRPO epochs and group size, bridge rollouts) are
searched cheaply at the posterior's mode: the cost model is linear in each quantity once
a structure and group size are fixed, so every candidate is projected onto the GPU-hour
budget in closed form and scored by the outcome model (~10 us). The best allocation of
each structure then gets its predictive distribution (``choice``), and the choice is
the highest expected accuracy, except that a candidate whose extra stages add less than
a run's noise gives way to the simpler one.

Only physics and the user are hard rules (``rule_problems`` checks a compiled graph
against them): GPU memory, GPU-hours, labels available (twice only with
``reuse_labels``), token-level distillation only with a shared tokenizer, a teacher
larger than the student, the plan's pins, and no stage below a useful size. The paper's
recipe is one candidate among the others; ``recommend`` says when it is not the pick.

    >>> from s2d_plan.plan.spec import load_plan
    >>> result = allocate(Context.from_spec(load_plan("plans/budget.yaml")))
    >>> result.best.structure.teacher
    'Qwen/Qwen3-8B'
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from s2d_plan.allocate import choice
from s2d_plan.allocate.search import Candidate, _Search, priced, search_random, trial_rows
from s2d_plan.allocate.space import (
    MIN_STEPS,
    Allocation,
    Context,
    Quantities,
    Scale,
    Structure,
    box,
    evaluate,
    pipeline,
    stage_costs,
    too_small,
)
from s2d_plan.errors import InfeasibleError
from s2d_plan.predict import costs

__all__ = ["MIN_STEPS", "Allocation", "Context", "Quantities", "Scale", "SearchResult", "Structure", "allocate",
           "default_structure", "evaluate", "pipeline", "random_search", "stage_costs", "structures"]

PROBE_BUDGET_FRACTION = 0.02  # a probe is worth at most this share of the GPU-hours
PROBE_BELOW_P_BEST = 0.6  # probe first when the pick is this unlikely to be the best candidate
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
    """Every structure physics and the plan's pins allow (probe decided later). Nothing
    else prunes: direct GRPO with a teacher available, a raw teacher where RL would fit,
    and no training at all are candidates like the paper's recipe, ranked by the posterior."""
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
        rls = [False]
        if ctx.labels > 0 and (pins.teacher_labels or _rl_fits(ctx, name)):
            rls = [True] if pins.teacher_labels else [False, True]
        for rl, bridge, stage3 in ((r, b, s3) for r in rls for b in bridges for s3 in (False, True)):
            if stage3 and (ctx.labels == 0 or pins.stage3 is False) or (not stage3 and pins.stage3 is True):
                continue
            if rl and stage3 and not ctx.reuse and ctx.labels - (pins.teacher_labels or 1) < 1:
                if pins.stage3:
                    raise InfeasibleError(
                        f"labels are short: Stage 3 is pinned on, but Stage 1 takes {pins.teacher_labels or 1:,} "
                        f"of the {ctx.labels:,} labels and reuse_labels is off (short by at least 1 label; lower "
                        "pins.teacher_labels or allow reuse)")
                continue
            out.append(Structure(name, rl, bridge, shared, stage3))
    free = pins.teacher in (None, "none") and not pins.bridge and not pins.stage3
    if ctx.labels > 0 and free:
        out.append(Structure(direct=True))
    if not out and not free:
        raise InfeasibleError("the plan's pins leave no valid pipeline: " + _pin_conflict(ctx, notes))
    if free:
        out.append(Structure())  # evaluate the student as it is
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
    search: dict[str, Any] = field(default_factory=dict)  # how the search went (counts)
    paper: Allocation | None = None  # the paper's recipe for this plan, when it can run
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # constants the choice depends on
    simpler: dict[str, Any] | None = None  # a richer candidate set aside because its extra stages add < noise


def default_structure(ctx: Context, allowed: list[Structure]) -> Structure | None:
    """The paper's recipe for this plan: the first usable teacher, RL on it, FKL->OPD
    (sequence FKL across tokenizers), Stage 3 when labels allow; None if none is allowed."""
    for s in allowed:
        if s.teacher and s.teacher_rl and s.bridge in ("fkl+opd", "fkl") and (s.fkl_token or s.bridge == "fkl"):
            want_s3 = any(x.stage3 for x in allowed if x.teacher == s.teacher)
            pick = replace(s, stage3=want_s3)
            if pick in allowed:
                return pick
    return None


def allocate(ctx: Context, trials: int | None = None, seed: int | None = None) -> SearchResult:
    """Search structures and quantities at the posterior mode, then rank the best of each
    structure by its predictive distribution; raise InfeasibleError when nothing fits.
    (``trials`` is accepted for compatibility; the local search sizes itself.)"""
    seed = ctx.spec.search.seed if seed is None else seed
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
    leaders = ranked[:TOP_STRUCTURES] + [x for x in ranked[TOP_STRUCTURES:] if ranked and
                                         (x.teacher, x.teacher_rl) == (ranked[0].teacher, ranked[0].teacher_rl)]
    for s in leaders:
        for group in box(ctx, s).groups:
            if group != best_of[s][1].group:
                _search_structure(ctx, s, group, state)
    finals = [a for a in (_finalize(ctx, c.structure, c.quantities) for c, _, _ in best_of.values()) if a]
    if not finals:
        raise InfeasibleError(_shortfall_message(ctx, shortfalls))
    finals = choice.with_predictive(ctx, finals)
    pick, simpler = choice.simplest_within_noise(finals)
    finals = [pick] + [a for a in finals if a is not pick]
    best = _maybe_probe(ctx, finals)
    direct = best if best.structure.direct else next((a for a in finals if a.structure.direct), None)
    recipe = default_structure(ctx, allowed)
    paper = next((a for want in ([recipe, replace(recipe, stage3=False)] if recipe else [])
                  for a in finals if a.structure == want), None)
    info = {"structures": len(allowed), "local_evaluations": len(record), "posterior": ctx.post.info}
    return SearchResult(best, [a for a in finals[1:] if not a.structure.direct], direct, infeasible, trial_rows(record),
                        list(dict.fromkeys(ctx.notes)), info, paper, choice.sensitivity(ctx, finals), simpler)


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
        small = too_small(ctx, s, search.raw((0.5, 1, 1, 1, 1)))
        if small:
            st.infeasible.setdefault(s.label, f"too few labels or prompts for a useful {small} "
                                              f"({ctx.min_steps} steps)")
            return
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
    close = len(finals) > 1 and (best.prediction.p_best or 0.0) < PROBE_BELOW_P_BEST
    no_evidence = not ctx.rates.source.startswith("probe")
    if pin is None and not (close and no_evidence):
        return best
    s = replace(best.structure, probe=True)
    probed = evaluate(ctx, s, best.quantities)
    cost = probed.costs["probe"].gpu_hours
    if pin is None and cost > PROBE_BUDGET_FRACTION * ctx.budget:
        return best
    probed = _finalize(ctx, s, best.quantities)
    return replace(probed, prediction=best.prediction) if probed else best


def random_search(ctx: Context, n: int, seed: int = 1, project: bool = False) -> Candidate:
    """Uniform random search over the same space: the benchmark's yardstick."""
    return search_random(ctx, structures(ctx), n, seed, project)
