"""A grid of tinyworlds where the right pipeline changes, and the regret of each policy (issue 11).

    python -m benchmarks.worlds --list                      # the built-in worlds and their specs
    python -m benchmarks.worlds                             # every built-in world: fixed arms, then policies
    python -m benchmarks.worlds --phase fixed --jobs 2      # the fixed arms only, two worlds side by side
    python -m benchmarks.worlds --world "name=mine,difficulty=1,student=2x64@1500,teacher=4x128@2000,labels=64,prompts=2048,hours=0.02"
    python -m benchmarks.worlds --report-only               # the table, plot and regret from the histories

A world is a spec (tinyworld/worlds/spec.py says its fields). Per world and seed, every
fixed arm of benchmarks.tinyworld runs (base, a, b, c, d, e, f, g; a-matched = direct
GRPO for the recipe's MEASURED time, g = replay for Stage 3's measured time), each one run
through the executor into the world's own home ``ROOT/<world>``; then the policies at the
same budget: the allocator with priors only (h-prior), the allocator after ``calibrate`` on
the OTHER worlds' homes only (h-lowo: leave-one-world-out), and ``execute --adaptive``
(where this checkout has it). Every policy's final model gets the same eval as the arms
(held-out sampled avg@k at T=1, greedy too). Where the two best fixed arms of a world are
within ``--noise`` points at the first seed, ``--extra-seeds`` are run for those two.

Regret = the world's best fixed arm minus the policy's value, in points of sampled avg@k;
"always direct GRPO" is a-matched, "always the paper's recipe" f (c where labels cannot
feed Stage 3, b where there are none). The table is one SQL query per world's history,
printed with its result; markdown, json and a PNG go to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from tinyworld.worlds import results as res, runs
from tinyworld.worlds.spec import BUILTIN, WorldSpecError, builtin_worlds, parse_world

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUICK_SPEC = "name=quick,difficulty=1,student=2x64@1500,teacher=4x128@2000,labels=16,prompts=64,hours=0.01"


def sizes(world, a):
    sz = runs.world_sizes(world, a.eval_size, a.eval_k)
    if a.quick:  # a smoke run: a handful of steps and problems
        sz = replace(sz, grpo_steps=2, matched_steps=2, rollouts=16, opd_steps=2, opd_prompts=16, fkl_batch=8,
                     eval_size=a.eval_size or 16, eval_k=a.eval_k or 1)
    return sz


def run_world(world, a, phase: str) -> None:
    """One world: fixed arms (first seed, extra seeds where the top two are close), then policies."""
    home, cache = a.home / world.name, a.home
    sz = sizes(world, a)
    t0 = time.time()
    print(f"[{world.name}] {world.spec()}\n  sizes: GRPO {sz.grpo_steps} steps, {sz.rollouts} rollouts, OPD "
          f"{sz.opd_steps} steps, Stage 1 {sz.labels} / Stage 3 {sz.held_out} labels, eval {sz.eval_size} x "
          f"avg@{sz.eval_k}; home {home}", flush=True)
    if phase in ("fixed", "all"):
        runs.run_fixed(world, a.seeds[0], home, cache, sz, a.arms)
        close = res.top_two(res.per_seed(home))
        print(f"  [{world.name}] after seed {a.seeds[0]}: {close}", flush=True)
        gap = close.split(": ")[1].split(" points")[0] if ": " in close else "nan"
        if a.extra_seeds and abs(float(gap)) < a.noise:
            pair = close.split(":")[0].split(" - ")
            need = set(pair) | ({"a", "f", "c", "b"} if "a-matched" in pair else set()) | (
                {"c", "f"} if "g" in pair else set())
            for seed in a.extra_seeds:
                runs.run_fixed(world, seed, home, cache, sz, [x for x in a.arms if x in need])
            print(f"  [{world.name}] with seeds {[a.seeds[0]] + a.extra_seeds}: "
                  f"{res.top_two(res.per_seed(home))}", flush=True)
    if phase in ("policies", "all") and not a.no_policies:
        run_policies(world, a, home, cache, sz)
    print(f"[{world.name}] done in {time.time() - t0:.0f}s", flush=True)


def run_policies(world, a, home: Path, cache: Path, sz) -> None:
    from s2d_plan.errors import S2DError

    seed = a.seeds[0]
    try:
        runs.run_allocator(world, seed, home, home / "prior", sz, cache, "h-prior")
    except S2DError as e:  # an infeasible plan is a measured outcome of the policy, not a crash
        print(f"  [{world.name}] allocator (priors): {e}", flush=True)
    others = [p.name for p in a.home.iterdir() if p.is_dir() and (p / "history.duckdb").exists()]
    try:
        lowo = runs.lowo_home(world, a.home, others)
    except Exception as e:  # too few other worlds measured yet: say so, go on
        print(f"  [{world.name}] calibrated allocator skipped: {e}", flush=True)
        return
    try:
        runs.run_allocator(world, seed, home, lowo, sz, cache, "h-lowo")
    except S2DError as e:
        print(f"  [{world.name}] allocator (calibrated): {e}", flush=True)
    try:
        runs.run_adaptive(world, seed, home, lowo, sz, cache)
    except S2DError as e:  # e.g. no labels to hold out: refused before anything runs, as a user would see
        print(f"  [{world.name}] adaptive refused: {e}", flush=True)


def in_parallel(worlds, a, phase: str) -> None:
    """Each world in its own process, ``--jobs`` at a time (each stage uses one or two threads)."""
    # each world's own report goes under the home; the grid's report (after all) to --out
    base = [sys.executable, __file__, "--home", str(a.home), "--out", str(a.home / "reports"), "--phase", phase,
            "--seeds", *map(str, a.seeds),
            "--noise", str(a.noise), "--arms", *a.arms]
    base += ["--extra-seeds", *map(str, a.extra_seeds)]  # empty: none (the default is 1 2)
    base += ["--quick"] if a.quick else []
    base += ["--no-policies"] if a.no_policies else []
    base += [f"--eval-size={a.eval_size}"] if a.eval_size else []
    base += [f"--eval-k={a.eval_k}"] if a.eval_k else []
    todo, live, t0 = list(worlds), [], time.time()
    done = 0
    while todo or live:
        while todo and len(live) < a.jobs:
            w = todo.pop(0)
            log = open(a.home / f"{w.name}.{phase}.log", "a")
            live.append((w, subprocess.Popen(base + ["--world", w.spec()], stdout=log, stderr=subprocess.STDOUT)))
            print(f"  started {w.name} ({phase}); log {log.name}", flush=True)
        time.sleep(2)
        for w, p in [x for x in live if x[1].poll() is not None]:
            live.remove((w, p))
            done += 1
            spent = time.time() - t0
            eta = spent / done * (len(worlds) - done)
            print(f"  {w.name} ({phase}) exit {p.returncode}; {done}/{len(worlds)} worlds in {spent:.0f}s, "
                  f"ETA {eta:.0f}s", flush=True)


def report(worlds, a, t0: float) -> int:
    cols, rows, notes = [], [], []
    for w in worlds:
        c, r = res.world_rows(a.home / w.name)
        cols, rows = c or cols, rows + r
        if r:
            notes.append(f"{w.name} ({w.spec()}): {res.top_two(res.per_seed(a.home / w.name))}")
    if not rows:
        print("no results yet")
        return 1
    print("\nresults (this SQL over each world's history, ROOT/<world>/history.duckdb):\n"
          + res.RESULTS_SQL.strip() + "\n")
    print(res.table_text(cols, rows))
    regret = res.policy_regret([dict(zip(cols, r)) for r in rows])
    print("\nregret per policy (points of held-out sampled avg@k; best fixed arm minus the policy):")
    for policy, per in regret.items():
        mean = sum(per.values()) / len(per)
        print(f"  {policy:<44} mean {mean:5.1f}  ({', '.join(f'{k} {v:+.1f}' for k, v in sorted(per.items()))})")
    if not runs.adaptive_available():
        notes.append("adaptive: not available in this checkout (s2d_plan.api has no `execute_adaptive`)")
    print("\n" + "\n".join(notes))
    a.out.mkdir(parents=True, exist_ok=True)
    tag = a.tag or ("quick" if a.quick else "grid" if len(worlds) > 1 else worlds[0].name)
    header = (f"{len(worlds)} world(s); seeds {a.seeds} (+{a.extra_seeds} where close); "
              + ("table from the histories (--report-only)" if a.report_only else f"wall {time.time() - t0:.0f}s"))
    paths = res.write(a.out, tag, cols, rows, regret, notes, header)
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", action="append", help="a world spec (repeatable); default: the built-in grid")
    ap.add_argument("--list", action="store_true", help="print the built-in worlds and exit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--extra-seeds", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--noise", type=float, default=3.0, help="points: closer top two get the extra seeds")
    ap.add_argument("--arms", nargs="+", default=runs.FIXED, help="fixed arms to run (default: all)")
    ap.add_argument("--phase", choices=("all", "fixed", "policies"), default="all")
    ap.add_argument("--no-policies", action="store_true", help="fixed arms only")
    ap.add_argument("--jobs", type=int, default=1, help="worlds run side by side")
    ap.add_argument("--home", type=Path, default=REPO / "tinyworld-cache" / "worlds")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--tag", help="results file name tag (default grid / quick / the world's name)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of one tiny world (" + QUICK_SPEC + ")")
    ap.add_argument("--eval-size", type=int)
    ap.add_argument("--eval-k", type=int)
    ap.add_argument("--report-only", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.list:
        for name, spec in BUILTIN.items():
            print(f"{name:<14} {spec}")
        return 0
    try:
        worlds = ([parse_world(w) for w in a.world] if a.world else
                  [parse_world(QUICK_SPEC)] if a.quick else builtin_worlds())
        for w in worlds:
            runs.world_sizes(w)  # every model built, every label count feasible: fail before running anything
    except WorldSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.home = a.home.resolve()
    a.home.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not a.report_only:
        phases = ["fixed", "policies"] if a.phase == "all" else [a.phase]
        for phase in phases:
            if a.jobs > 1 and len(worlds) > 1:
                in_parallel(worlds, a, phase)
            else:
                for i, w in enumerate(worlds):
                    run_world(w, a, phase)
                    print(f"  {i + 1}/{len(worlds)} worlds ({phase}) in {time.time() - t0:.0f}s, ETA "
                          f"{(time.time() - t0) / (i + 1) * (len(worlds) - i - 1):.0f}s", flush=True)
    return report(worlds, a, t0)


if __name__ == "__main__":
    sys.exit(main())
