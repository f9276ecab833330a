"""`s2d-plan calibrate`: a real DuckDB history built by executing graphs, refusal, and an
update of the outcome posterior by those runs that must reduce its error on them (and that
recommend then uses and announces)."""

from __future__ import annotations

import json

import pytest

from s2d_plan.errors import S2DError
from s2d_plan.evidence.calibration_file import describe, load_calibration
from s2d_plan.evidence.from_runs import calibrate, observations, outcome_inputs
from s2d_plan.graph import StageGraph
from s2d_plan.plan.registry import ModelInfo
from s2d_plan.predict.outcome import Pipeline, SolveRates
from s2d_plan.predict.priors import SEED_SD
from s2d_plan.run.executor import execute_graph
from s2d_plan.run.progress import PlainDisplay
from tests.fakes.simulate import value_at

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
    # every stage here is a `simulate` stage: its kind gets its own time factor, shown in the output
    assert fit["costs"]["stages"] >= 4 and doc["costs"]["kind_factors"] == {"simulate": fit["costs"]["factor"]}
    assert cal.costs.factor("simulate") == fit["costs"]["factor"]
    assert f"simulate {fit['costs']['factor']:6.3g}  (" in out.stdout and "fitted)" in out.stdout
    assert "Posterior updated by 4 run(s)" in describe(cal)

    rec = cli("recommend", "plans/tiny-cpu.yaml", "--trials", "20", timeout=180)
    assert rec.returncode == 0, rec.stderr
    assert "Posterior updated by 4 run(s)" in rec.stdout
    assert (s2d_home / "posterior" / f"{fit['posterior']}.json").exists()  # recommend found calibrate's fit


# --------------------------------------------------------------------------- per-kind time factors


def _history(home, runs: list[tuple[str, list[tuple[str, str, float, float, float]]]]) -> None:
    """Runs written through the history's own writer: (run_id, [(stage_id, kind, estimated
    GPU-h, time factor already in that estimate, measured GPU-h)]) on one GPU each."""
    from s2d_plan.contract import Stage
    from s2d_plan.history.store import HistoryWriter

    w = HistoryWriter(home)
    try:
        for run_id, stages in runs:
            typed = [Stage.model_validate({"id": sid, "kind": kind, "policy": "m",
                                           "estimated": {"gpu_hours": est, "time_factor": f}})
                     for sid, kind, est, f, _ in stages]
            graph = {"plan": "p", "stages": [s.model_dump(mode="json") for s in typed]}
            w.start_run(run_id, "p", "h", json.dumps(graph), sum(s.estimated.gpu_hours for s in typed))
            for i, (st, (_, _, _, _, measured)) in enumerate(zip(typed, stages)):
                w.add_stage(run_id, i, st, f"{st.id}-{run_id}", home / st.id)
                w.start_stage(run_id, st.id, 1, 1, home / "log", home / "m")
                w.finish_stage(run_id, st.id, "FINISHED", measured * 3600, 1, 0, None)
            w.finish_run(run_id, "FINISHED", None)
    finally:
        w.close()


def test_time_factors_are_fitted_per_kind_and_applied_by_the_cost_model(s2d_home):
    from s2d_plan.evidence.calibration_file import write_calibration
    from s2d_plan.evidence.from_runs import _cost_constants, fit_costs
    from s2d_plan.plan.registry import gpu_info, model_info
    from s2d_plan.predict import costs

    # grpo runs at half its estimate (one of them was planned under an earlier factor of 2:
    # its estimate is taken back to the uncalibrated model first), eval at 1.5x, and the
    # one rollout is too few stages for a factor of its own
    _history(s2d_home, [
        ("r1", [("teacher_grpo", "grpo", 2.0, 1.0, 1.0), ("final_eval", "eval", 0.2, 1.0, 0.3),
                ("teacher_rollouts", "rollout", 1.0, 1.0, 1.0)]),
        ("r2", [("teacher_grpo", "grpo", 4.0, 2.0, 1.0), ("final_eval", "eval", 0.2, 1.0, 0.3)]),
        ("r3", [("teacher_grpo", "grpo", 1.0, 1.0, 0.5), ("final_eval", "eval", 0.4, 1.0, 0.6)]),
    ])
    fit = fit_costs(s2d_home)
    by = fit["by_kind"]
    assert fit["stages"] == 7 and by["grpo"]["stages"] == 3 and by["grpo"]["fitted"]
    assert by["grpo"]["factor"] == pytest.approx(0.5) and by["eval"]["factor"] == pytest.approx(1.5)
    pooled = (1.0 + 1.0 + 0.5 + 0.3 + 0.3 + 0.6 + 1.0) / (2.0 + 2.0 + 1.0 + 0.2 + 0.2 + 0.4 + 1.0)
    assert fit["factor"] == pytest.approx(pooled, abs=1e-4)
    assert not by["rollout"]["fitted"] and by["rollout"]["ratio"] == 1.0
    assert by["rollout"]["factor"] == pytest.approx(pooled, abs=1e-4)

    doc = {"costs": _cost_constants({}, fit)}
    assert doc["costs"]["kind_factors"] == {"eval": by["eval"]["factor"], "grpo": by["grpo"]["factor"]}
    write_calibration(s2d_home, doc)
    c = load_calibration(s2d_home).costs
    assert c.factor("grpo") == pytest.approx(0.5) and c.factor("rollout") == pytest.approx(pooled, abs=1e-4)
    h100, q8 = gpu_info("H100-80GB"), model_info("Qwen/Qwen3-8B")
    for cost, kind in ((lambda k: costs.grpo_cost(q8, h100, 8, 8000, 8, 256, 1024, 64, c=k), "grpo"),
                       (lambda k: costs.rollout_cost(q8, h100, 8, 40000, 256, 1024, k), "rollout"),
                       (lambda k: costs.eval_cost(q8, h100, 8, 500, 4, 256, 1024, k), "eval")):
        base, fitted = cost(costs.DEFAULT_CONSTANTS), cost(c)
        assert fitted.gpu_hours == pytest.approx(base.gpu_hours * c.factor(kind)) and fitted.time_factor == c.factor(kind)


def test_an_older_single_factor_calibration_is_replaced_not_compounded():
    from s2d_plan.evidence.from_runs import _cost_constants

    old = {"costs": {"mfu_train": 0.48, "decode_step_s": 0.00625, "bytes_full_ft": 18.0},
           "fit": {"costs": {"factor": 0.625, "by_kind": {"grpo": 0.44}}}}
    fit = {"factor": 0.7, "by_kind": {"grpo": {"factor": 0.5, "fitted": True}, "eval": {"factor": 0.7, "fitted": False}}}
    out = _cost_constants(old, fit)
    # the speed constants the old calibrate rescaled go; a constant set by hand stays
    assert out == {"bytes_full_ft": 18.0, "time_factor": 0.7, "kind_factors": {"grpo": 0.5}}


def test_a_long_fit_reports_its_progress_and_draws_the_same_samples():
    """`calibrate` shows the sampler's progress (the CLI draws it with an ETA on a
    terminal); reporting it must not change the posterior."""
    from s2d_plan.predict.posterior import STEPS, fit, paper_evidence

    seen: list[tuple[int, int]] = []
    watched = fit(paper_evidence(), progress=lambda step, steps: seen.append((step, steps)))
    assert [s for s, _ in seen] == list(range(1, STEPS + 1)) and {n for _, n in seen} == {STEPS}
    assert watched.samples_x == fit(paper_evidence()).samples_x


def test_a_held_out_calibration_reads_only_the_homes_it_is_given(tmp_path):
    """calibrate(home, sources=...): evidence from the source homes only, written to ``home``
    (what leave-one-world-out planning in benchmarks/worlds.py needs)."""
    a, b, target = tmp_path / "a", tmp_path / "b", tmp_path / "target"
    for labels, steps in RUNS[:3]:
        run(graph_for(labels, steps), a)
    run(graph_for(*RUNS[3]), b)
    doc = calibrate(target, sources=[a])
    assert doc["fit"]["runs"] == 3 and (target / "calibration.json").exists()
    assert not (a / "calibration.json").exists() and not (b / "calibration.json").exists()
    assert len(load_calibration(target).evidence) == 3
    both = calibrate(target, sources=[a, b])
    assert both["fit"]["runs"] == 4 and len(load_calibration(target).evidence) == 4
    assert both["fit"]["costs"]["stages"] == 4  # stage times of both homes
    with pytest.raises(S2DError, match="has 1"):
        calibrate(target, sources=[b])
