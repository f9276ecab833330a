"""`show`'s final metrics put evals and rewards first (they were alphabetical)."""

from __future__ import annotations

import duckdb

from s2d_plan.history.read import SHOW_SQL


def test_final_metrics_lead_with_evals_then_rewards(tmp_path):
    con = duckdb.connect(str(tmp_path / "h.duckdb"))
    con.execute("CREATE TABLE stages (run_id TEXT, stage_id TEXT, kind TEXT, status TEXT, attempt INT, "
                "est_gpu_hours DOUBLE, gpu_hours DOUBLE, wall_s DOUBLE, position INT, cache_key TEXT)")
    con.execute("CREATE TABLE metrics (run_id TEXT, stage_id TEXT, attempt INT, step INT, key TEXT, value DOUBLE)")
    con.execute("CREATE VIEW metrics_latest AS SELECT stage_id, '' AS cache_key, key, value, step FROM metrics")
    con.execute("INSERT INTO stages VALUES ('r', 'g', 'grpo', 'FINISHED', 1, 1, 1, 1, 0, 'k')")
    for key in ("alpha/loss", "train/reward", "eval/math/avg@4", "beta/kl"):
        con.execute("INSERT INTO metrics VALUES ('r', 'g', 1, 1, ?, 0.5)", [key])
    (metrics,) = con.execute(SHOW_SQL.replace("arg_max_null", "arg_max"), ["r"]).fetchone()[-1:]
    assert [m.split("=")[0] for m in metrics.split()] == ["eval/math/avg@4", "train/reward", "alpha/loss", "beta/kl"]
