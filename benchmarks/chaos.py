"""The chaos loop: kill the executor at random points, then finish, and count what the
history lost, doubled or left stuck.

Each cycle starts ``s2d-plan execute`` (the real CLI, its own process) on a graph of
parallel ``simulate`` stages (the test fake: deterministic metrics, checkpoints, resume)
and a stage that needs them all, waits a random time, and sends SIGKILL, SIGTERM or
SIGINT. The graph changes every ``--per-graph`` cycles, so kills land on fresh work and
on resumed work. At the end every graph is run to completion, then the metric files on
disk (the runners' own record) are compared with the history:

    rows expected   metric lines in every attempt's metrics file
    ingested        rows in `metrics`
    duplicated      rows beyond one per (run, stage, attempt, step, key)
    lost            lines of an attempt with no row
    stuck           stages left RUNNING/PENDING and runs left RUNNING
    temp files      leftover `.history*.tmp*` / `*.tmp` files under the home

    PYTHONPATH=. python -m benchmarks.chaos --cycles 50
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def write_graph(directory: Path, generation: int, stages: int, steps: int) -> Path:
    """``stages`` parallel stages and one that needs them all; ``generation`` (the seed)
    changes every stage's key, so a new generation is new work."""
    parallel = [{"id": f"p{i}", "kind": "simulate", "policy": "m", "resources": {"gpus": 0},
                 "params": {"seed": generation, "steps": steps, "sleep_s": 0.02, "extra_keys": 4,
                            "checkpoint_every": 5}} for i in range(stages)]
    join = {"id": "join", "kind": "simulate", "policy": "@p0", "needs": [s["id"] for s in parallel],
            "resources": {"gpus": 0}, "params": {"seed": generation, "steps": steps // 2, "sleep_s": 0.01}}
    path = directory / f"chaos-{generation}.json"
    path.write_text(json.dumps({"plan": f"chaos-{generation}", "stages": parallel + [join]}))
    return path


def start(graph: Path, home: Path) -> subprocess.Popen:
    env = dict(os.environ, S2D_HOME=str(home), S2D_STAGE_PLUGINS="tests.fakes.simulate",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def running_attempts(home: Path, since: float) -> int:
    """Metrics files of attempts started in this cycle (a kill then lands mid-run)."""
    runs = home / "runs"
    if not runs.exists():
        return 0
    return sum(1 for p in runs.glob("*/*.metrics.jsonl") if p.stat().st_mtime >= since)


def chaos_cycle(graph: Path, home: Path, rng: random.Random, delays: tuple[float, float]) -> tuple[bool, str, bool]:
    """One execute, one signal at a random time; (landed mid-run, the signal, a traceback?)."""
    began = time.time()
    proc = start(graph, home)
    time.sleep(rng.uniform(*delays))
    sig = rng.choice(SIGNALS)
    mid = proc.poll() is None and running_attempts(home, began) > 0
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err += "\n(hung after the signal: killed)"
    if "Traceback" in err:
        print(f"traceback after {sig.name}:\n{err}", file=sys.stderr)
    return mid, sig.name, "Traceback" in err


def metric_lines(path: Path) -> int:
    n = 0
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        n += isinstance(d, dict) and d.get("key") is not None and isinstance(d.get("step"), int)
    return n


def tally(home: Path) -> dict[str, int]:
    con = duckdb.connect(str(home / "history.duckdb"), read_only=True)
    try:
        per_attempt = {(r, s, a): (n, d) for r, s, a, n, d in con.execute(
            "SELECT run_id, stage_id, attempt, count(*), count(DISTINCT (step, key)) FROM metrics GROUP BY ALL"
        ).fetchall()}
        expected = lost = 0
        for path in (home / "runs").glob("*/*.metrics.jsonl"):
            stage, attempt = path.name.split(".")[:2]
            lines = metric_lines(path)
            expected += lines
            lost += max(0, lines - per_attempt.get((path.parent.name, stage, int(attempt)), (0, 0))[1])
        ingested = sum(n for n, _ in per_attempt.values())
        duplicated = ingested - sum(d for _, d in per_attempt.values())
        stuck = con.execute("SELECT (SELECT count(*) FROM stages WHERE status IN ('RUNNING', 'PENDING')) + "
                            "(SELECT count(*) FROM runs WHERE status IN ('RUNNING', 'SCHEDULED'))").fetchall()[0][0]
        runs = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    finally:
        con.close()
    temps = [p for p in home.rglob("*") if p.is_file() and (".tmp" in p.name or p.name.startswith(".history"))]
    return {"runs": runs, "rows expected": expected, "rows ingested": ingested, "rows duplicated": duplicated,
            "rows lost": lost, "stages stuck": stuck, "temp files left": len(temps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--stages", type=int, default=4, help="parallel stages per graph")
    ap.add_argument("--steps", type=int, default=150, help="steps per parallel stage (0.02 s each)")
    ap.add_argument("--per-graph", type=int, default=3, help="kill cycles before the graph changes")
    ap.add_argument("--min-delay", type=float, default=1.0, help="earliest kill, seconds after start")
    ap.add_argument("--max-delay", type=float, default=4.0, help="latest kill, seconds after start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", type=Path, default=None, help="default: a new temporary directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    home = args.home or Path(tempfile.mkdtemp(prefix="s2d-chaos-"))
    graphs_dir = Path(tempfile.mkdtemp(prefix="s2d-chaos-graphs-"))
    started = time.monotonic()
    mid_run, tracebacks, graphs, sent = 0, 0, [], {s.name: 0 for s in SIGNALS}
    for cycle in range(args.cycles):
        generation = cycle // args.per_graph
        if generation == len(graphs):
            graphs.append(write_graph(graphs_dir, generation, args.stages, args.steps))
        mid, sig, traceback = chaos_cycle(graphs[generation], home, rng, (args.min_delay, args.max_delay))
        mid_run, tracebacks, sent[sig] = mid_run + mid, tracebacks + traceback, sent[sig] + 1
    unfinished = 0
    for graph in graphs:  # then completion: every graph once more, undisturbed
        proc = start(graph, home)
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            unfinished += 1
            print(f"{graph.name}: exit {proc.returncode}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
    figures = {"cycles": args.cycles, "signals sent": ", ".join(f"{k} {v}" for k, v in sent.items()),
               "kills that landed mid-run": mid_run, "tracebacks": tracebacks, "graphs": len(graphs),
               "graphs not completed": unfinished, **tally(home)}
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"{'wall seconds':<{width}}  {time.monotonic() - started:.0f}")
    print(f"home: {home}")


if __name__ == "__main__":
    main()
