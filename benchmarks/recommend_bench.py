"""Benchmark of `s2d-plan recommend` (not a timed test; run it by hand):

1. cold wall time of ``s2d-plan recommend plans/budget.yaml`` as a subprocess,
   interpreter start and imports included (target: < 2 s on a 2-core box);
2. search quality: the recommended plan's predicted accuracy vs the best of a
   5,000-trial uniform random search over the same space (target: within 0.2 points).

    .venv/bin/python benchmarks/recommend_bench.py [PLAN]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall_times(plan: str, runs: int = 5) -> list[float]:
    exe = shutil.which("s2d-plan", path=str(Path(sys.executable).parent)) or "s2d-plan"
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([exe, "recommend", plan], check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return times


def import_times() -> dict[str, float]:
    out = {}
    for mod in ("s2d_plan.cli", "optuna"):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {mod}"], check=True, cwd=ROOT)
        out[mod] = time.perf_counter() - t
    return out


def search_gap(plan: str, trials: int = 5000) -> tuple[float, float, str, str, float, float]:
    from s2d_plan.allocate.allocator import Context, allocate, random_search
    from s2d_plan.plan.spec import load_plan

    spec = load_plan(plan)
    t = time.perf_counter()
    result = allocate(Context.from_spec(spec))
    search_s = time.perf_counter() - t
    rand = random_search(Context.from_spec(spec), trials, seed=1)
    projected = random_search(Context.from_spec(spec), trials, seed=1, project=True)
    return (result.best.prediction.value, rand.value, result.best.structure.label, rand.structure.label, search_s,
            projected.value)


def main() -> None:
    plan = sys.argv[1] if len(sys.argv) > 1 else "plans/budget.yaml"
    plan = str((ROOT / plan) if not Path(plan).is_absolute() else plan)
    times = wall_times(plan)
    print(f"(1) s2d-plan recommend {plan}: cold wall {times[0]:.2f} s (first run), "
          f"median {statistics.median(times):.2f} s over {len(times)} runs  [target < 2 s]")
    for mod, sec in import_times().items():
        print(f"    python -c 'import {mod}': {sec:.2f} s")
    ours, rand, label, rand_label, search_s, projected = search_gap(plan)
    print(f"(2) recommended {ours:.2%} ({label}; allocate() {search_s:.2f} s)")
    print(f"    random search, 5,000 trials: {rand:.2%} ({rand_label})")
    print(f"    gap (random best - recommended): {(rand - ours) * 100:+.2f} points  [target <= 0.2]")
    print(f"    random search projected onto the budget like the allocator, 5,000 trials: {projected:.2%} "
          f"(gap {(projected - ours) * 100:+.2f} points)")


if __name__ == "__main__":
    main()
