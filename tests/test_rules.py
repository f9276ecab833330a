"""The rule checker is proven by what it catches: for every rule, a graph that breaks it
(hand-made from a sound compiled graph) must be reported under that rule's name, and
`s2d-plan validate GRAPH.json` must refuse it (exit 2, naming the rule and the stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2d_plan.api import recommend
from s2d_plan.graph import parse_graph
from s2d_plan.plan.spec import load_plan
from s2d_plan.rules import RULES, rule_problems

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ROOT / "plans" / "budget.yaml"
CROSS = ROOT / "plans" / "llama-cross-family.yaml"
ZERO = ROOT / "tests" / "plans" / "zero-labels.yaml"
_graphs: dict = {}
_home: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _planning_home(shared_home):
    """Plans are recommended in the session's shared home (never inside the checkout)."""
    _home[:] = [shared_home]


def sound(plan: Path) -> dict:
    """The recommended graph of ``plan`` as the JSON a user could edit."""
    if plan not in _graphs:
        _graphs[plan] = json.loads(recommend(plan, home=_home[0], trials=10).graph.to_json())
    return json.loads(json.dumps(_graphs[plan]))


def stage(graph: dict, sid: str) -> dict:
    return next(s for s in graph["stages"] if s["id"] == sid)


def grpo_stage(sid: str, policy: str, offset: int, count: int, needs=()) -> dict:
    return {"id": sid, "kind": "grpo", "policy": policy, "needs": list(needs), "params": {"steps": 10},
            "data": {"labeled": {"source": "EleutherAI/hendrycks_math", "offset": offset, "count": count}}}


def over_memory(g: dict) -> Path:
    stage(g, "teacher_grpo")["estimated"]["peak_mem_gb_per_gpu"] = 95.0
    return BUDGET


def over_budget(g: dict) -> Path:
    g["estimated"]["gpu_hours"] = 577.0
    return BUDGET


def more_labels_than_available(g: dict) -> Path:
    g["stages"].insert(0, grpo_stage("extra_grpo", "Qwen/Qwen3-8B", 0, 7500))
    return BUDGET


def overlapping_label_slices(g: dict) -> Path:
    stage(g, "student_grpo")["data"]["labeled"]["offset"] = 0
    return BUDGET


def slice_outside_the_pool(g: dict) -> Path:
    stage(g, "student_grpo")["data"]["labeled"]["offset"] = 7400
    return BUDGET


def grpo_with_zero_labels(g: dict) -> Path:
    g["stages"].insert(0, grpo_stage("teacher_grpo", "Qwen/Qwen3-8B", 0, 0))
    return ZERO


def teacher_smaller_than_student(g: dict) -> Path:
    stage(g, "student_opd")["teacher"] = "Qwen/Qwen3-0.6B"
    return BUDGET


def token_distillation_across_tokenizers(g: dict) -> Path:
    fkl = next(s for s in g["stages"] if s["kind"] == "fkl")
    fkl["teacher"] = "Qwen/Qwen3-14B"
    fkl["params"]["mode"] = "token"
    fkl["needs"] = [n for n in fkl["needs"] if n != "teacher_grpo"]
    return CROSS


BREAKERS = {
    "memory": over_memory,
    "budget": over_budget,
    "labels-available": more_labels_than_available,
    "labels-overlap": overlapping_label_slices,
    "labels-slice": slice_outside_the_pool,
    "grpo-without-labels": grpo_with_zero_labels,
    "teacher-not-larger": teacher_smaller_than_student,
    "tokenizer-mismatch": token_distillation_across_tokenizers,
}


def test_every_rule_has_a_graph_that_breaks_it():
    assert sorted(BREAKERS) == sorted(RULES)


@pytest.mark.parametrize("plan", [BUDGET, CROSS, ZERO], ids=lambda p: p.stem)
def test_compiled_graphs_break_no_rule(plan):
    assert rule_problems(load_plan(plan), parse_graph(sound(plan))) == []


@pytest.mark.parametrize("rule", sorted(BREAKERS))
def test_each_broken_rule_is_caught_by_name(rule):
    g = sound(_plan_of(rule))
    plan = BREAKERS[rule](g)
    problems = rule_problems(load_plan(plan), parse_graph(g))
    assert rule in {p.rule for p in problems}, problems


def _plan_of(rule: str) -> Path:
    return {"grpo-without-labels": ZERO, "tokenizer-mismatch": CROSS}.get(rule, BUDGET)


def test_validate_graph_refuses_a_broken_graph_naming_rule_and_stage(cli, tmp_path):
    g = sound(BUDGET)
    overlapping_label_slices(g)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(g))
    out = cli("validate", str(path))
    assert out.returncode == 2 and "[labels-overlap]" in out.stderr, out.stderr
    assert "student_grpo" in out.stderr and "teacher_grpo" in out.stderr
    sound_path = tmp_path / "sound.json"
    sound_path.write_text(json.dumps(sound(BUDGET)))
    ok = cli("validate", str(sound_path))
    assert ok.returncode == 0 and "every allocation rule holds" in ok.stdout, ok.stderr


def test_validate_graph_rejects_a_mistyped_parameter_before_anything_runs(cli, tmp_path):
    g = sound(BUDGET)
    stage(g, "student_opd")["params"]["learning_rat"] = 1e-6
    stage(g, "teacher_grpo")["params"]["num_generations"] = "eight"
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(g))
    for verb in ("validate", "execute"):
        out = cli(verb, str(path))
        assert out.returncode == 2, out.stderr
        assert "stage 'student_opd': params.learning_rat: unknown opd parameter" in out.stderr
        assert "(did you mean 'learning_rate'?)" in out.stderr
        assert "stage 'teacher_grpo': params.num_generations: Input should be a valid integer" in out.stderr
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.spec.json"))


def test_a_graph_without_its_plan_checks_types_and_says_rules_were_not_checked(cli, tmp_path):
    g = sound(BUDGET)
    g["meta"].pop("plan_spec")
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(g))
    out = cli("validate", str(path))
    assert out.returncode == 0 and "rules not checked" in out.stdout
    overlapping_label_slices(g)
    path.write_text(json.dumps(g))
    out = cli("validate", str(path), "--plan", str(BUDGET))
    assert out.returncode == 2 and "[labels-overlap]" in out.stderr
