"""Per-stage scheduling overhead of each backend against local processes.

    PYTHONPATH=. python -m benchmarks.cluster_overhead [--stages 6] [--backends local,ray,slurm]

Runs the same chain of N trivial ``simulate`` stages (one step, no sleep: what is left is
starting, placing, polling and finishing a stage) through the real CLI on each backend,
on clusters this script starts on this machine (two Ray nodes, a two-node Slurm cluster
from scripts/slurm-local.sh) and stops by their own pids. It prints, per backend, the run's
wall time per stage and the per-stage overhead added over local. The tiny plan's stages
cost the same to schedule as these; their own compute is the same on every backend.
A chain (each stage needs the previous) makes every stage's scheduling latency count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ["S2D_STAGE_PLUGINS"] = "tests.fakes.simulate"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from tests.clusters import start_ray_cluster, start_slurm_cluster  # noqa: E402 (after the plugin environment it reads)


def chain(n: int, cluster: dict | None) -> dict:
    stages = [{"id": f"s{i}", "kind": "simulate", "policy": "m" if i == 0 else f"@s{i - 1}",
               "needs": [] if i == 0 else [f"s{i - 1}"], "resources": {"gpus": 1}, "params": {"steps": 1}}
              for i in range(n)]
    return {"plan": "overhead", "stages": stages, **({"cluster": cluster} if cluster else {})}


def run(graph: dict, work: Path, env: dict) -> tuple[float, list[float]]:
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    path = work / "graph.json"
    path.write_text(json.dumps(graph))
    env = dict(env, S2D_HOME=str(home))
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "s2d_plan.cli", "execute", str(path)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if r.returncode != 0:
        raise SystemExit(f"execute failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    q = subprocess.run([sys.executable, "-m", "s2d_plan.cli", "history", "--json",
                        "SELECT wall_s FROM stages ORDER BY position"], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True)
    return wall, [row["wall_s"] for row in json.loads(q.stdout)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--backends", default="local,ray,slurm")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s2d-overhead-"))
    results: dict[str, tuple[float, list[float]]] = {}
    try:
        for backend in a.backends.split(","):
            env = dict(os.environ)
            if backend == "local":
                results[backend] = run(chain(a.stages, None), work, env)
            elif backend == "ray":
                cluster = start_ray_cluster()
                try:
                    results[backend] = run(chain(a.stages, {"backend": "ray", "address": cluster.address}), work, env)
                finally:
                    cluster.stop()
            elif backend == "slurm":
                cluster = start_slurm_cluster()
                try:
                    tick = cluster.run("scontrol", "show", "config")
                    sched = next((line.split("=", 1)[1].strip() for line in tick.splitlines()
                                  if line.startswith("SchedulerParameters")), "")
                    print(f"slurm SchedulerParameters: {sched}")
                    env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
                    results[backend] = run(chain(a.stages, {"backend": "slurm", "gpus_per_node": 1}), work, env)
                finally:
                    cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{a.stages} chained one-step stages per backend (wall of `s2d-plan execute`, cluster start excluded)")
    # run/stage spreads the one-off connect + home check over the stages; the stage's own
    # wall (launch to detected end, from the history) minus local's is the per-stage cost
    print(f"{'backend':8} {'run s':>7} {'run s/stage':>12} {'stage wall_s median':>20} {'vs local':>9}")
    local_median = sorted(results["local"][1])[len(results["local"][1]) // 2] if "local" in results else None
    for backend, (wall, walls) in results.items():
        median = sorted(walls)[len(walls) // 2]
        extra = f"{median - local_median:+.2f} s" if local_median is not None and backend != "local" else "-"
        print(f"{backend:8} {wall:7.1f} {wall / a.stages:12.2f} {median:20.2f} {extra:>9}")


if __name__ == "__main__":
    main()
