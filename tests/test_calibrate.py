"""`s2d-plan calibrate`: a real DuckDB history built by executing graphs, refusal, and an
update of the outcome posterior by those runs that must reduce its error on them (and that
recommend then uses and announces)."""

from __future__ import annotations

import json

import pytest

from tests.fakes.simulate import value_at
from s2d_plan.run.progress import PlainDisplay
from s2d_plan.predict.calibrate import calibrate, observations, outcome_inputs
from s2d_plan.predict.calibration import describe, load_calibration
from s2d_plan.errors import S2DError
from s2d_plan.run.executor import execute_graph
from s2d_plan.graph import StageGraph
from s2d_plan.predict.outcome import Pipeline, SolveRates
from s2d_plan.predict.priors import SEED_SD
from s2d_plan.plan.registry import ModelInfo

STUDENT = ModelInfo(name="student", params_b=0.5, layers=2, hidden=64, heads=4, kv_heads=2, vocab=512, tokenizer="t")
METRIC = "eval/arith/avg@4"


def graph_for(labels: int, steps: int) -> StageGraph:
    """Direct GRPO with ``labels`` labels; its eval (a simulate stage) 'measures'
    value_at('final_eval', METRIC, steps - 1): fewer steps, higher accuracy."""
    pipe = Pipeline(student_labels=labels, student_epochs=2.0, group_size=8)
    return StageGraph.model_validate({
        "plan": "calib-test", "predicted": {"eval": "arith", "value": 0.3, "low": 0.2, "high": 0.4},
        "stages": [{"id": "final_eval", "kind": "simulate", "policy": "m", "params": {"steps": steps, "keys": [METRIC]},
                    "estimated": {"gpu_hours": 5e-4}}],
        "meta": {"structure": f"direct GRPO, {labels} labels",
                 "outcome_inputs": outcome_inputs(STUDENT, SolveRates(0.3), pipe)}})


def run(graph: StageGraph, home) -> None:
    assert execute_graph(graph, home, display=PlainDisplay(every_s=1e9)).exit_code == 0


# labels -> eval steps; measured accuracy rises with labels from ~0.34 to ~0.52
RUNS = [(200, 20), (800, 15), (3000, 12), (12000, 10)]


def test_refuses_when_the_history_is_too_small(s2d_home, cli):
    out = cli("calibrate")
    assert out.returncode == 2 and "needs at least 3" in out.stderr and "has 0" in out.stderr
    for labels, steps in RUNS[:2]:
        run(graph_for(labels, steps), s2d_home)
    with pytest.raises(S2DError, match="has 2"):
        calibrate(s2d_home)
    out = cli("calibrate")
    assert out.returncode == 2 and "has 2" in out.stderr
    assert not (s2d_home / "calibration.json").exists()


def test_fit_reduces_error_and_recommend_uses_it(s2d_home, cli):
    for labels, steps in RUNS:
        run(graph_for(labels, steps), s2d_home)
    run(graph_for(*RUNS[0]), s2d_home)  # a cached rerun is one observation, not two
    obs, skipped = observations(s2d_home)
    assert len(obs) == 4 and sum(skipped.values()) == 1
    measured = {o.pipeline.student_labels: o.measured for o in obs}
    assert measured == {labels: pytest.approx(value_at("final_eval", METRIC, steps - 1)) for labels, steps in RUNS}

    out = cli("calibrate")
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    doc = json.loads((s2d_home / "calibration.json").read_text())
    fit = doc["fit"]
    assert fit["runs"] == 4 and fit["time"] and 0 < fit["sigma_model"]
    # was: constants refitted to zero degrees of freedom; now each run is a datum with its noise
    assert len(doc["evidence"]) == 4 and all(d["sd"] >= SEED_SD for d in doc["evidence"])
    assert doc["outcome"] == {}  # nothing pinned: the posterior holds the constants
    assert fit["rmse_after"] < 0.7 * fit["rmse_before"]  # not zero: sigma_model takes what the forms miss
    assert f"paper evidence alone {fit['rmse_before'] * 100:.2f}, with these runs {fit['rmse_after'] * 100:.2f}" \
        in out.stdout
    cal = load_calibration(s2d_home)
    assert len(cal.evidence) == 4 and cal.pins == {}
    assert doc["costs"]["mfu_train"] > 0 and fit["costs"]["stages"] >= 4
    assert "Posterior updated by 4 run(s)" in describe(cal)

    rec = cli("recommend", "plans/tiny-cpu.yaml", "--trials", "20", timeout=180)
    assert rec.returncode == 0, rec.stderr
    assert "Posterior updated by 4 run(s)" in rec.stdout
    assert (s2d_home / "posterior" / f"{fit['posterior']}.json").exists()  # recommend found calibrate's fit
