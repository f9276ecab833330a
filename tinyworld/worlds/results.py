"""The grid's results: one SQL query per world's history, regret per policy, a plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

FIXED_ARMS = ("a", "a-matched", "b", "c", "d", "e", "f", "g")
POLICIES = {  # policy -> the arm (run tag) that measures it
    "always direct GRPO": ("a-matched", "a", "base"),  # with no labels, direct GRPO leaves the student as is
    "always the paper's recipe": ("f", "c", "b"),
    "allocator (priors)": ("h-prior",),
    "allocator (calibrated on the other worlds)": ("h-lowo",),
    "adaptive": ("adaptive",),
}

RESULTS_SQL = """
WITH arm_runs AS (
    SELECT run_id, json_extract_string(graph, '$.meta.world') AS world,
           json_extract_string(graph, '$.meta.arm') AS arm,
           CAST(json_extract(graph, '$.meta.seed') AS INTEGER) AS seed,
           TRY_CAST(json_extract(graph, '$.meta.cpu_hours') AS DOUBLE) AS session_hours  -- adaptive: all its runs
    FROM runs WHERE plan = 'worlds-bench' AND status = 'FINISHED'
    QUALIFY row_number() OVER (PARTITION BY world, arm, seed ORDER BY start_time DESC) = 1),
evals AS (   -- each run's final eval, through the cache key that computed it
    SELECT s.run_id, max(m.value) FILTER (m.key LIKE 'eval/%/avg@%') AS sampled,
           max(m.value) FILTER (m.key LIKE 'eval/%/greedy') AS greedy
    FROM stages s JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
    WHERE s.stage_id = 'final_eval' GROUP BY s.run_id),
compute AS ( -- measured CPU-hours of every training stage a run used, wherever it was computed
    SELECT s.run_id, sum(done.hours) AS cpu_hours
    FROM stages s JOIN (SELECT cache_key, max(gpu_hours) AS hours FROM stages
                        WHERE status = 'FINISHED' GROUP BY cache_key) done USING (cache_key)
    WHERE s.kind <> 'eval' GROUP BY s.run_id),
per_arm AS (
    SELECT world, arm, count(*) AS seeds, avg(sampled) AS sampled, stddev_samp(sampled) AS sd,
           avg(greedy) AS greedy, avg(coalesce(session_hours, cpu_hours, 0)) AS cpu_hours
    FROM arm_runs JOIN evals USING (run_id) LEFT JOIN compute USING (run_id) GROUP BY ALL),
best AS (    -- the best fixed arm of the world (mean sampled avg@k over its seeds)
    SELECT world, arg_max(arm, sampled) AS best_arm, max(sampled) AS best FROM per_arm
    WHERE arm IN ('a', 'a-matched', 'b', 'c', 'd', 'e', 'f', 'g') GROUP BY world)
SELECT world, arm, seeds, round(100 * sampled, 1) AS sampled_avg, round(100 * coalesce(sd, 0), 1) AS sampled_sd,
       round(100 * greedy, 1) AS greedy_avg, round(cpu_hours, 4) AS cpu_hours, best_arm,
       round(100 * (best - sampled), 1) AS regret
FROM per_arm JOIN best USING (world) ORDER BY world, arm
"""

PER_SEED_SQL = """
SELECT json_extract_string(r.graph, '$.meta.arm') AS arm, CAST(json_extract(r.graph, '$.meta.seed') AS INT) AS seed,
       arg_max(m.value, r.start_time) AS sampled
FROM runs r JOIN stages s USING (run_id) JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
WHERE r.plan = 'worlds-bench' AND r.status = 'FINISHED' AND s.stage_id = 'final_eval' AND m.key LIKE 'eval/%/avg@%'
GROUP BY ALL
"""


def world_rows(home: Path) -> tuple[list[str], list[tuple]]:
    from s2d_plan.history.read import query

    if not (home / "history.duckdb").exists():
        return [], []
    return query(RESULTS_SQL, home)


def per_seed(home: Path) -> dict[str, dict[int, float]]:
    from s2d_plan.history.read import query

    out: dict[str, dict[int, float]] = {}
    for arm, seed, v in query(PER_SEED_SQL, home)[1]:
        out.setdefault(arm, {})[seed] = 100 * v
    return out


def policy_regret(rows: list[dict]) -> dict[str, dict[str, float]]:
    """policy -> world -> regret (points), from the per-world table's rows."""
    by_world: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_world.setdefault(r["world"], {})[r["arm"]] = r
    out: dict[str, dict[str, float]] = {}
    for policy, arms in POLICIES.items():
        for world, got in by_world.items():
            arm = next((a for a in arms if a in got), None)
            if arm is not None:
                out.setdefault(policy, {})[world] = got[arm]["regret"]
    return out


def top_two(seeds: dict[str, dict[int, float]]) -> str:
    """The two best fixed arms, their per-seed paired difference and whether it is within noise."""
    means = {a: statistics.mean(v.values()) for a, v in seeds.items() if a in FIXED_ARMS and v}
    if len(means) < 2:
        return "fewer than two fixed arms measured"
    first, second = sorted(means, key=means.get, reverse=True)[:2]
    common = sorted(set(seeds[first]) & set(seeds[second]))
    d = [seeds[first][s] - seeds[second][s] for s in common]
    sd = statistics.stdev(d) if len(d) > 1 else float("nan")
    if len(d) < 2:
        verdict = " - one seed: noise unknown"
    else:  # two standard errors of the paired mean
        verdict = " - within noise" if abs(statistics.mean(d)) < 2 * sd / len(d) ** 0.5 else f" - {first} wins"
    return (f"{first} - {second}: {statistics.mean(d):+.1f} points over seeds {common} (per seed "
            f"{', '.join(f'{x:+.1f}' for x in d)}; sd {sd:.1f}){verdict}")


def table_text(cols: list[str], rows: list[tuple]) -> str:
    from tinyworld.lab import table_text as text

    return text(cols, rows)


def plot(rows: list[dict], regret: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({r["world"] for r in rows})
    arms = [a for a in ("base",) + FIXED_ARMS + ("h-prior", "h-lowo", "adaptive") if any(r["arm"] == a for r in rows)]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(12, 8))
    w = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        vals = {r["world"]: r for r in rows if r["arm"] == arm}
        xs = [j + i * w for j, wd in enumerate(worlds) if wd in vals]
        ax.bar(xs, [vals[wd]["sampled_avg"] for wd in worlds if wd in vals], w,
               yerr=[vals[wd]["sampled_sd"] for wd in worlds if wd in vals], capsize=2, label=arm)
    ax.set_xticks([j + 0.4 for j in range(len(worlds))], worlds)
    ax.set_ylabel("held-out sampled avg@k (%)")
    ax.legend(ncol=7, fontsize=7)
    pw = 0.8 / max(len(regret), 1)
    for i, (policy, per) in enumerate(regret.items()):
        xs = [j + i * pw for j, wd in enumerate(worlds) if wd in per]
        bx.bar(xs, [per[wd] for wd in worlds if wd in per], pw, label=policy)
    bx.set_xticks([j + 0.4 for j in range(len(worlds))], worlds)
    bx.set_ylabel("regret vs the world's best fixed arm (points)")
    bx.axhline(0, color="k", lw=0.5)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, tag: str, cols: list[str], rows: list[tuple], regret: dict, notes: list[str],
          header: str) -> list[Path]:
    dicts = [dict(zip(cols, r)) for r in rows]
    means = {p: round(statistics.mean(v.values()), 2) for p, v in regret.items() if v}
    lines = [f"| {p} | " + " | ".join(f"{w}: {x:+.1f}" for w, x in sorted(v.items())) + f" | **{means[p]:.1f}** |"
             for p, v in regret.items() if v]
    md = (f"# worlds {tag}\n\n{header}\n\n## every arm and policy (SQL over each world's history)\n\n"
          f"{table_text(cols, rows)}\n\n## regret per policy (points of held-out sampled avg@k)\n\n"
          "| policy | per world | mean |\n|---|---|---|\n" + "\n".join(lines) + "\n\n"
          + "\n".join(f"- {n}" for n in notes) + f"\n\n```sql\n{RESULTS_SQL.strip()}\n```\n")
    paths = [out / f"worlds-{tag}.md", out / f"worlds-{tag}.json", out / f"worlds-{tag}.png"]
    paths[0].write_text(md)
    paths[1].write_text(json.dumps({"rows": dicts, "regret": regret, "mean_regret": means, "notes": notes},
                                   indent=1, default=str))
    plot(dicts, regret, paths[2])
    return paths
