"""Quantity search inside structures: projected local search, and the uniform random
search the benchmark compares against.

Optuna's TPE used to refine the best structures after the local search; measured on
every shipped plan it added nothing the local search had not found (see
``benchmarks/recommend_bench.py``, which still runs it as a yardstick), so the
recommend path does without it. Where a model-based sampler earns its place is a noisy,
expensive objective: the pilots of adaptive execution."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from s2d_plan.allocate.space import Context, LinearCost, Quantities, Structure, box, pipeline, quantities, too_small
from s2d_plan.predict.outcome import predict

TRIALS_KEPT = 300
# A move away from the rule-based starting point must buy at least this much predicted
# accuracy (0.01 points): where the outcome model is flat (tiny plans), the recipe's
# default quantities stand instead of noise-level optima.
MIN_GAIN = 1e-4


@dataclass
class Candidate:
    structure: Structure
    quantities: Quantities
    value: float
    gpu_hours: float
    feasible: bool


class _Search:
    """One structure at one group size: unit-cube point -> projected quantities -> value."""

    # the unit cube a structure's quantities live in; the last is OPD's batch on its ladder
    DIMS = ("u_frac", "u_teacher_epochs", "u_fkl", "u_opd", "u_student_epochs", "u_opd_batch")

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
        if "opd" in (s.bridge or "") and len(self.box.opd_batches) > 1:
            dims.append(5)
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
        """Amounts shrink; the label split and OPD's batch stay where they are."""
        return (u[0],) + tuple(x * f for x in u[1:5]) + tuple(u[5:])

    def score(self, u: tuple[float, ...]) -> Candidate:
        q, cost, ok = self.project(u)
        ctx = self.ctx
        ok = ok and too_small(ctx, self.s, q) is None
        value = predict(ctx.student, ctx.rates, pipeline(ctx, self.s, q, self.lc.memory), ctx.k).value
        return Candidate(self.s, q, value if ok else -1.0, cost, ok)

    def local(self, rng: random.Random, n_random: int, record: list[Candidate]) -> tuple[tuple[float, ...], Candidate]:
        """Random starts, then coordinate moves of shrinking size on the structure's dims."""
        starts = [(0.8, 0.6, 0.6, 0.6, 0.6, 1.0)] + [tuple(rng.random() for _ in self.DIMS) for _ in range(n_random)]
        best_u, best = starts[0], self.score(starts[0])
        record.append(best)
        for u in starts[1:]:
            cand = self.score(u)
            record.append(cand)
            if cand.value > best.value + MIN_GAIN:
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
                        if cand.value > best.value + MIN_GAIN:
                            best_u, best, improved = tuple(u), cand, True
        if 5 in self.dims:  # the outcome model is flat in OPD's batch: the cheapest batch of equal value
            best_u, best = self._cheapest_batch(best_u, best, record)
        return best_u, best

    def _cheapest_batch(self, best_u: tuple[float, ...], best: Candidate,
                        record: list[Candidate]) -> tuple[tuple[float, ...], Candidate]:
        n = len(self.box.opd_batches)
        for i in range(n):
            u = tuple(best_u[:5]) + (i / (n - 1),)
            cand = self.score(u)
            record.append(cand)
            if cand.feasible and cand.value >= best.value - MIN_GAIN and cand.gpu_hours < best.gpu_hours:
                best_u, best = u, cand
        return best_u, best


def trial_rows(record: list[Candidate]) -> list[dict[str, Any]]:
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


def priced(ctx: Context, s: Structure, group: int) -> tuple[Structure, LinearCost, tuple | None]:
    """(structure, its linear cost, the first stage that fits no memory strategy or None).
    A token-level FKL bridge that does not fit becomes sequence-level: token-level keeps
    the teacher resident for its logits, sequence-level trains on its text alone."""
    lc = LinearCost(ctx, s, group)
    bad = lc.infeasible_stage()
    if bad and bad[0] == "student_fkl" and s.fkl_token and s.bridge == "fkl":
        seq = replace(s, fkl_token=False)
        lc_seq = LinearCost(ctx, seq, group)
        if not lc_seq.infeasible_stage():
            return seq, lc_seq, None
    return s, lc, bad


def search_random(ctx: Context, allowed: list[Structure], n: int, seed: int = 1, project: bool = False) -> Candidate:
    """Uniform random search over the same space (structures x group x unit cube): the
    benchmark's yardstick. ``project`` shrinks over-budget points onto the budget as the
    allocator does, instead of discarding them (a stronger yardstick)."""
    rng = random.Random(seed)
    cache: dict[tuple[Structure, int], _Search | None] = {}
    best = Candidate(Structure(), Quantities(), -1.0, 0.0, False)
    for _ in range(n):
        s = rng.choice(allowed)
        group = rng.choice(box(ctx, s).groups)
        if (s, group) not in cache:
            s2, lc, bad = priced(ctx, s, group)
            cache[(s, group)] = None if bad else _Search(ctx, s2, group, lc)
        search = cache[(s, group)]
        if search is None:
            continue
        s = search.s
        u = tuple(rng.random() for _ in _Search.DIMS)
        if project:
            cand = search.score(u)
        else:
            q = search.raw(u)
            cost = search.lc(q)
            value = predict(ctx.student, ctx.rates, pipeline(ctx, s, q, search.lc.memory), ctx.k).value
            cand = Candidate(s, q, value, cost, cost <= ctx.budget and too_small(ctx, s, q) is None)
        if cand.feasible and cand.value > best.value:
            best = cand
    return best
