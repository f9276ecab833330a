"""`s2d-plan recommend` through the real CLI: human output, --json, -o, --plot, evidence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2d_plan.api import recommend
from s2d_plan.cli import app
from s2d_plan.graph import load_graph, parse_graph
from s2d_plan.plan.spec import load_plan

ROOT = Path(__file__).resolve().parents[1]
BUDGET = str(ROOT / "plans/budget.yaml")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("S2D_HOME", str(tmp_path / "home"))


def test_human_output_has_pipeline_alternatives_baseline_and_rationale():
    result = runner.invoke(app, ["recommend", BUDGET])
    assert result.exit_code == 0, result.output
    out = result.output
    for needle in ("Recommended: ", "stage", "labels", "GPU-h", "mem/GPU", "teacher_grpo", "predicted math500",
                   "80% interval", "P(beats direct GRPO)", "P(best of the candidates)", "Candidates",
                   "direct GRPO on the student", "(the usual practice)", "Sensitivity", "Why:", "Labels go to Qwen3-"):
        assert needle in out, needle


def test_json_and_csv_carry_the_distribution():
    result = runner.invoke(app, ["recommend", BUDGET, "--json"])
    p = json.loads(result.stdout)["predicted"]
    assert p["low"] < p["value"] < p["high"] and 0 < p["p_best"] <= 1 and 0.5 < p["p_beats_direct"] <= 1
    assert p["sensitive"] and {"constant", "assumed", "low", "high"} <= set(p["sensitive"][0])
    meta = json.loads(result.stdout)["meta"]
    assert meta["paper_recipe"]["structure"].startswith("GRPO Qwen3-8B") and meta["sensitivity"]
    csv = runner.invoke(app, ["recommend", BUDGET, "--csv"]).output.splitlines()
    assert csv[0] == "structure,role,predicted,low,high,mean,p_best,p_beats_direct,gpu_hours"
    rows = [line.split(",") for line in csv[1:]]
    assert rows[0][1] == "recommended" and any(r[1] == "baseline" for r in rows)
    assert all(0 <= float(r[6]) <= 1 for r in rows)


def test_a_plan_where_the_model_prefers_something_else_says_so():
    """plans/few-labels-4b.yaml: 2,000 labels, a Qwen3-4B student already close to its
    teachers. The paper's recipe is a candidate, not a rule; the output says why it lost."""
    result = runner.invoke(app, ["recommend", str(ROOT / "plans/few-labels-4b.yaml")])
    assert result.exit_code == 0, result.output
    assert "The paper's recipe (GRPO Qwen3-" in result.output and "is not the pick here" in result.output


def test_json_prints_only_the_graph_and_o_writes_an_executable_file(tmp_path):
    result = runner.invoke(app, ["recommend", BUDGET, "--json", "-o", str(tmp_path / "g.json")])
    assert result.exit_code == 0
    graph = parse_graph(json.loads(result.stdout))
    assert {"stages", "predicted", "estimated"} <= set(json.loads(result.stdout))
    assert load_graph(tmp_path / "g.json").stages == graph.stages
    for st in graph.stages:
        assert st.estimated.gpu_hours > 0 and st.estimated.peak_mem_gb_per_gpu > 0


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pareto.png"
    result = runner.invoke(app, ["recommend", BUDGET, "--plot", str(out), "--trials", "20"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_infeasible_plan_exits_2_with_the_shortfall():
    result = runner.invoke(app, ["recommend", str(ROOT / "tests/plans/impossible-budget.yaml")])
    assert result.exit_code == 2
    assert "GPU-hours is short by" in result.output


def test_recommend_graph_is_the_executor_entry_point():
    rec = recommend(BUDGET, trials=30)
    graph, summary = rec.graph, rec.summary
    assert graph.plan == "qwen3-math-1p7b" and graph.plan_hash
    assert "predicted math500" in summary and "GPU-hours" in summary


def test_probe_evidence_replaces_the_registry_prior(tmp_path):
    """Planning is pure after the evidence edge: solve rates a probe measured, given as
    values, replace the student's registry prior and the rationale says so."""
    from s2d_plan import planning
    from s2d_plan.evidence.calibration_file import load_calibration
    from s2d_plan.evidence.home import HomeEvidence
    from s2d_plan.predict.outcome import rates_from_evidence

    measured = rates_from_evidence([(8, c % 9) for c in range(200)])  # spread over 0..1, mean 0.5
    evidence = HomeEvidence(tmp_path, load_calibration(tmp_path), {"Qwen/Qwen3-1.7B": measured}, None)
    graph = planning.recommend(load_plan(BUDGET), trials=20, evidence=evidence).graph
    rates = graph.meta["solve_rates"]["Qwen/Qwen3-1.7B"]
    assert rates["source"].startswith("probe") and abs(rates["mean"] - 0.5) < 0.02
    assert any("probe in the history" in line for line in graph.meta["rationale"])


def test_recommend_loads_only_what_it_uses():
    """`s2d-plan recommend` imports the planner, not the executor, launchers or adaptive."""
    code = (f"import sys; from s2d_plan.cli import main; sys.argv = ['s2d-plan', 'recommend', {str(BUDGET)!r}, "
            "'--trials', '10']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "mods = sorted(m for m in sys.modules if m.startswith('s2d_plan'))\n"
            "print(len(mods), [m for m in mods if m.split('.')[1:2] in (['run'], ['adaptive'])])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "S2D_HOME": "/nonexistent/home"})
    count, loaded = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) <= 40 and loaded == "[]", proc.stdout[-2000:] + proc.stderr[-2000:]


def test_recommend_imports_no_heavy_library():
    code = (f"import sys; from s2d_plan.api import recommend; recommend({BUDGET!r}, trials=10); "
            "bad = [m for m in ('torch', 'transformers', 'trl', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_probe_evidence_from_a_real_history_store(tmp_path, monkeypatch):
    """Evidence rows written the way the executor records a probe stage's output."""
    from s2d_plan.compiler import compile_probe_graph
    from s2d_plan.history import store as history

    home = tmp_path / "home"
    monkeypatch.setenv("S2D_HOME", str(home))
    probe = compile_probe_graph(load_plan(BUDGET)).stage("probe")
    source = probe.data.labeled.source
    writer = history.HistoryWriter(home)
    rows = [("r1", "probe", probe.policy, source, i, 8, (i * 7) % 9, history.utcnow()) for i in range(300)]
    writer.append_rows("evidence", ("run_id", "stage_id", "model", "source", "prompt_index", "samples", "correct",
                                    "time"), rows)
    writer.close()
    graph = recommend(BUDGET, trials=20).graph
    assert graph.meta["solve_rates"]["Qwen/Qwen3-1.7B"]["source"] == "probe (300 prompts)"


def test_probe_graph_probes_every_model_without_spending_labels():
    from s2d_plan.compiler import compile_probe_graph

    graph = compile_probe_graph(load_plan(BUDGET))
    assert [s.policy for s in graph.stages] == ["Qwen/Qwen3-1.7B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B"]
    assert graph.labels_spent() == 0 and all(s.kind == "probe" for s in graph.stages)
    assert parse_graph(json.loads(graph.to_json())).stages == graph.stages


def test_completion_tokens_sets_every_generation_length(tmp_path):
    text = (ROOT / "plans" / "tiny-cpu.yaml").read_text().replace(
        "  prompts: {source: ../tiny-models/data/prompts.jsonl, size: 256}",
        "  prompts: {source: ../tiny-models/data/prompts.jsonl, size: 256}\n  completion_tokens: 72")
    assert "completion_tokens: 72" in text
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    graph = recommend(plan).graph
    lengths = [v for s in graph.stages for k, v in s.params.model_dump().items()
               if k in ("max_new_tokens", "max_completion_length")]
    assert lengths and set(lengths) == {72}
