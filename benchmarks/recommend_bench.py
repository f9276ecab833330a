"""Benchmark of `s2d-plan recommend` (not a timed test; run it by hand):

1. wall time of ``python -m s2d_plan.cli recommend plans/budget.yaml`` as a fresh
   process, interpreter start and imports included: once with an empty home (the outcome
   posterior must be refitted: target < 10 s) and then with the posterior cached in the
   home (target < 2 s on a 2-core box);
2. search quality: within the recommended structure, the local search's quantities vs
   the best of a 5,000-trial uniform random search over the same space (both scored at
   the posterior mode; target: within 0.2 points);
3. does Optuna earn its place? Over every shipped and test plan, TPE (64 seeded trials
   on the two leading structures, projected onto the budget like the local search) vs
   the local search alone: the points it adds and the time it costs.

    .venv/bin/python -m benchmarks.recommend_bench [PLAN]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall_times(plan: str, home: str, runs: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "s2d_plan.cli", "recommend", plan, "--home", home], check=True,
                       capture_output=True, cwd=ROOT, env=env)
        times.append(time.perf_counter() - t)
    return times


def search_gap(plan: str, trials: int = 5000) -> tuple[float, float, str, float]:
    """(local search, random search) in the recommended structure, at the posterior mode,
    and allocate()'s seconds (the posterior is fitted before the clock starts)."""
    from s2d_plan.allocate.allocator import Context, allocate
    from s2d_plan.allocate.search import search_random
    from s2d_plan.allocate.space import evaluate
    from s2d_plan.plan.spec import load_plan

    ctx = Context.from_spec(load_plan(plan))
    _ = ctx.post  # fit (or load) the posterior outside the timing
    t = time.perf_counter()
    result = allocate(ctx)
    search_s = time.perf_counter() - t
    best = result.best
    ours = evaluate(ctx, best.structure, best.quantities).prediction.value
    rand = search_random(ctx, [replace(best.structure, probe=False)], trials, seed=1, project=True)
    return ours, rand.value, best.structure.label, search_s


def tpe_gain(plan: Path, trials: int = 64, seed: int = 0) -> tuple[float, float, float]:
    """(points TPE adds over the local search's best of the two leading structures, TPE
    seconds, local-search seconds), all at the posterior mode."""
    import optuna

    from s2d_plan.allocate.allocator import Context, allocate
    from s2d_plan.allocate.search import _Search, priced
    from s2d_plan.allocate.space import box, evaluate
    from s2d_plan.plan.spec import load_plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = Context.from_spec(load_plan(plan))
    _ = ctx.post
    t = time.perf_counter()
    result = allocate(ctx)
    local_s = time.perf_counter() - t
    leaders = [replace(a.structure, probe=False) for a in [result.best] + result.alternatives[:1]]
    local = max(evaluate(ctx, s, a.quantities).prediction.value
                for s, a in zip(leaders, [result.best] + result.alternatives[:1]))
    t = time.perf_counter()
    labels = {s.label: s for s in leaders}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    searches: dict = {}
    best = -1.0
    for _ in range(trials):
        trial = study.ask()
        s = labels[trial.suggest_categorical("structure", list(labels))]
        group = trial.suggest_categorical(f"group_size[{s.label}]", list(box(ctx, s).groups))
        u = tuple(trial.suggest_float(n, 0.0, 1.0) for n in _Search.DIMS)
        if (s, group) not in searches:
            s2, lc, bad = priced(ctx, s, group)
            searches[(s, group)] = None if bad else _Search(ctx, s2, group, lc)
        search = searches[(s, group)]
        value = search.score(u).value if search else -1.0
        study.tell(trial, value)
        best = max(best, value)
    return (max(best, local) - local) * 100, time.perf_counter() - t, local_s


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recommend_bench",
                                     description="Wall time and search quality of `s2d-plan recommend`.")
    parser.add_argument("plan", nargs="?", default="plans/budget.yaml", help="plan file (default plans/budget.yaml)")
    plan = parser.parse_args().plan
    plan = str((ROOT / plan) if not Path(plan).is_absolute() else plan)
    home = tempfile.mkdtemp(prefix="s2d-bench-home-")
    refit = wall_times(plan, home, 1)[0]
    warm = wall_times(plan, home, 5)
    print(f"(1) recommend {Path(plan).name}: {refit:.2f} s with an empty home (posterior refitted)  [target < 10 s]")
    print(f"    {statistics.median(warm):.2f} s median (min {min(warm):.2f}) over {len(warm)} fresh processes with "
          f"the posterior cached in the home  [target < 2 s]")
    ours, rand, label, search_s = search_gap(plan)
    print(f"(2) {label}: local search {ours:.2%} (allocate() {search_s:.2f} s); random search, 5,000 projected "
          f"trials in that structure: {rand:.2%}; gap {(rand - ours) * 100:+.2f} points  [target <= 0.2]")
    plans = sorted(ROOT.glob("plans/*.yaml")) + sorted(p for p in (ROOT / "tests/plans").glob("*.yaml")
                                                        if p.stem not in ("impossible-budget", "no-memory"))
    gains = []
    for p in plans:
        gain, tpe_s, local_s = tpe_gain(p)
        gains.append(gain)
        print(f"    {p.stem:22s} TPE adds {gain:+.3f} points in {tpe_s:.2f} s (local search + choice {local_s:.2f} s)")
    helped = sum(g > 0.01 for g in gains)
    print(f"(3) TPE (64 trials) improved the local search by more than 0.01 points on {helped} of {len(gains)} plans; "
          f"largest gain {max(gains):.3f} points")


if __name__ == "__main__":
    main()
