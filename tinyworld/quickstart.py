"""The quickstart: the reward-density principle, seen on a laptop CPU in about two minutes.

    python -m tinyworld.quickstart [--plan plans/quickstart.yaml] [--report PATH]

tinyworld's pretrained student (2 layers x 64) and teacher (4 x 128) ship with the
repository (``tinyworld/pretrained/d1``, built by ``python -m tinyworld.build``), so nothing
is trained from scratch here. The script runs the commands a user would type, echoing each:

1. ``s2d-plan recommend`` on ``plans/quickstart.yaml``: where the 512 labels go, and why;
2. ``s2d-plan execute`` of that graph, with one reference stage added, ``base_eval``: the
   shipped student evaluated exactly as ``final_eval`` evaluates the trained one (same
   held-out problems, sampled avg@4 at T=1 and greedy), so "before" and "after" come
   from one run;
3. ``s2d-plan history``: the student's held-out accuracy before and after, from the history;
4. ``s2d-plan report``: the run as one HTML page; its path is printed.

A second call reuses every stage from the cache and finishes in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "tinyworld" / "pretrained" / "d1"
EVAL_K = 4

# base_eval: the student as shipped; final_eval: the student after the pipeline
BEFORE_AFTER_SQL = ("SELECT stage_id, key, round(100 * value, 1) AS pct FROM stages JOIN metrics_latest "
                    "USING (stage_id, cache_key) WHERE stages.run_id = '{run}' AND kind = 'eval' "
                    "AND (key LIKE '%avg@%' OR key LIKE '%greedy') ORDER BY position, key")


def _shown(arg: str) -> str:
    """An argument as a user would type it (double quotes read better around SQL)."""
    if arg and not any(c in arg for c in ' "$`\\!*?'):
        return arg
    return f'"{arg}"' if not any(c in arg for c in '"$`\\!') else shlex.quote(arg)


def s2d(*args: str) -> None:
    """Run one `s2d-plan` command as a user would, echoing it first."""
    print(f"\n$ s2d-plan {' '.join(_shown(a) for a in args)}", flush=True)
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1")
    subprocess.run([sys.executable, "-m", "s2d_plan.cli", *args], check=True, cwd=REPO, env=env)


def with_base_eval(graph_path: Path, plan: str, max_new: int) -> Path:
    """The recommended graph plus ``base_eval``: its final eval, pointed at the plan's student.

    Both evals measure what tinyworld's benchmark measures: sampled avg@4 at T=1 and greedy
    (the CPU scale's default, greedy alone, is near its ceiling in this world for every
    model, so it would hide the difference). The training stages are the allocator's, as
    recommended."""
    from s2d_plan.plan.spec import load_plan

    spec = load_plan(plan)
    graph = json.loads(graph_path.read_text())
    for st in graph["stages"]:
        if st["kind"] == "eval":
            st["params"].update(k=EVAL_K, temperature=1.0, greedy=True, max_new_tokens=max_new, batch_size=256)
    final = next(st for st in graph["stages"] if st["kind"] == "eval")
    base = {**final, "id": "base_eval", "policy": spec.resolve_path(spec.student.model), "needs": []}
    graph["stages"] = [base] + graph["stages"]
    out = graph_path.with_name(graph_path.stem + "+base.json")
    out.write_text(json.dumps(graph, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tinyworld.quickstart", description=__doc__.split("\n")[0])
    ap.add_argument("--plan", default=str(REPO / "plans" / "quickstart.yaml"))
    ap.add_argument("--report", default=None, help="where to write the report (default: <home>/quickstart-report.html)")
    a = ap.parse_args(argv)
    if not (WORLD / "world.json").exists():
        print(f"error: the pretrained tinyworld models are missing from {WORLD} (rebuild them with "
              f"`python -m tinyworld.build {WORLD.relative_to(REPO)}`, ~15 minutes)", file=sys.stderr)
        return 2
    home = Path(os.environ.get("S2D_HOME") or REPO / ".s2d").absolute()
    home.mkdir(parents=True, exist_ok=True)
    world = json.loads((WORLD / "world.json").read_text())
    base = world["models"]["student"]["base"]
    print(f"tinyworld: a synthetic arithmetic world; student {world['models']['student']['params']:,} params, "
          f"teacher {world['models']['teacher']['params']:,} params, pretrained and shipped in "
          f"{WORLD.relative_to(REPO)} (the build measured the student at {base.get('avg@4', 0):.1%} held-out)")
    graph = home / "quickstart-graph.json"
    s2d("recommend", a.plan, "-o", str(graph))
    s2d("execute", str(with_base_eval(graph, a.plan, world["max_new_tokens"])))
    from s2d_plan.api import query

    run = query("SELECT run_id FROM runs ORDER BY start_time DESC LIMIT 1", home)[1][0][0]
    print("\nbase_eval is the student as shipped, final_eval the student after the pipeline "
          "(held-out %: sampled avg@4 at T=1, and greedy):")
    s2d("history", "--table", BEFORE_AFTER_SQL.format(run=run))
    report = Path(a.report) if a.report else home / "quickstart-report.html"
    s2d("report", run, "-o", str(report))
    print(f"\nopen {report} in a browser: the pipeline, predicted vs measured, every curve and eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
