"""Allocator scenarios: every rule holds, budgets and memory are respected, and the
teacher-first, bridge-then-Stage-3 structure wins where the paper says it does."""

import json
from pathlib import Path

import pytest

from s2d_plan.allocate.allocator import Context, allocate, random_search
from s2d_plan.compiler import compile_graph
from s2d_plan.rules import rule_problems
from s2d_plan.errors import InfeasibleError
from s2d_plan.graph import parse_graph
from s2d_plan.allocate.explain import graph_meta
from s2d_plan.plan.spec import STAGE_IDS, load_plan, parse_plan
from s2d_plan.plan.yamlio import read_yaml

ROOT = Path(__file__).resolve().parents[1]
FEASIBLE = sorted(ROOT.glob("plans/*.yaml")) + [
    p for p in sorted((ROOT / "tests/plans").glob("*.yaml")) if p.stem not in ("impossible-budget", "no-memory")]
_cache: dict = {}


def recommend(path: Path, **pins):
    key = (str(path), json.dumps(pins, sort_keys=True))
    if key not in _cache:
        spec = load_plan(path)
        if pins:
            doc = read_yaml(path)
            doc.data["pins"] = pins
            spec = parse_plan(doc, source=str(path), base_dir=path.parent)
        ctx = Context.from_spec(spec)
        result = allocate(ctx)
        graph = compile_graph(ctx, result, graph_meta(ctx, result))
        _cache[key] = (spec, ctx, result, graph)
    return _cache[key]


def kinds(graph):
    return [(s.id, s.kind) for s in graph.stages]


@pytest.mark.parametrize("path", FEASIBLE, ids=lambda p: p.stem)
def test_every_plan_compiles_to_a_sound_graph(path):
    spec, ctx, result, graph = recommend(path)
    assert rule_problems(spec, graph) == []
    again = parse_graph(json.loads(graph.to_json()))  # the file execute would read
    assert again.stages == graph.stages
    assert all(s.id in STAGE_IDS for s in graph.stages)
    assert graph.stages[-1].kind == "eval" and graph.predicted.low <= graph.predicted.value <= graph.predicted.high
    assert graph.estimated.gpu_hours <= spec.compute.gpu_hours
    for st in graph.stages:
        assert st.estimated.peak_mem_gb_per_gpu <= spec.compute.gpu_info.memory_gb
        if st.kind == "grpo":
            lab = st.data.labeled
            assert lab.count > 0 and lab.source and lab.problem_field and lab.answer_field
        if st.kind in ("rollout", "opd"):
            assert st.data.prompts is not None and st.data.prompts.count > 0
    trials = graph.meta["trials"]
    assert 0 < len(trials) <= 300
    assert set(trials[0]) == {"number", "structure", "params", "value", "gpu_hours", "feasible"}


def test_paper_setting_goes_teacher_first_then_bridge_then_stage3():
    spec, ctx, result, graph = recommend(ROOT / "plans/budget.yaml")
    ids = [s.id for s in graph.stages if s.id != "probe"]
    assert ids == ["teacher_grpo", "teacher_rollouts", "student_fkl", "student_opd", "student_grpo", "final_eval"]
    t, s3 = graph.stage("teacher_grpo"), graph.stage("student_grpo")
    assert t.policy == "Qwen/Qwen3-8B" and s3.policy == "@student_opd"
    tl, sl = t.data.labeled.model_dump(), s3.data.labeled.model_dump()
    assert tl["offset"] + tl["count"] <= sl["offset"] and tl["count"] + sl["count"] <= 7500
    assert graph.predicted.value > result.baseline.prediction.value + 0.03  # beats direct GRPO clearly
    assert graph.stage("student_fkl").params.mode == "token"


def test_other_tokenizer_teacher_gets_sequence_level_fkl_only():
    spec, ctx, result, graph = recommend(ROOT / "tests/plans/cross-tokenizer.yaml")
    assert "student_opd" not in [s.id for s in graph.stages]
    assert graph.stage("student_fkl").params.mode == "sequence"
    assert "sequence-level" in result.best.structure.label
    _, _, _, llama = recommend(ROOT / "plans/llama-cross-family.yaml")
    for st in llama.stages:
        if st.kind in ("opd", "fkl") and getattr(st.params, "mode", "token") == "token":
            assert "Qwen" not in (st.teacher or "")


def test_teachers_not_larger_than_the_student_are_not_teachers():
    spec, ctx, result, graph = recommend(ROOT / "tests/plans/small-teachers.yaml")
    assert kinds(graph) == [("direct_grpo", "grpo"), ("final_eval", "eval")]
    assert any("not a teacher" in n for n in result.notes)


def test_no_teacher_means_direct_grpo():
    _, _, _, graph = recommend(ROOT / "plans/no-teacher.yaml")
    assert [s.id for s in graph.stages if s.id != "probe"] == ["direct_grpo", "final_eval"]


def test_zero_labels_means_no_grpo():
    for name in ("zero-labels", "zero-labels-big-gap"):
        spec, ctx, result, graph = recommend(ROOT / f"tests/plans/{name}.yaml")
        assert not [s for s in graph.stages if s.kind == "grpo"] and graph.labels_spent() == 0
    # a far stronger raw teacher still pays through distillation alone
    assert "raw Llama-3.3-70B" in result.best.structure.label


def test_few_labels_still_go_to_the_teacher_first():
    _, _, _, graph = recommend(ROOT / "tests/plans/few-labels.yaml")
    grpo = [s for s in graph.stages if s.kind == "grpo"]
    assert grpo[0].id == "teacher_grpo" and graph.labels_spent() <= 300


def test_budgets_large_and_small():
    spec, ctx, result, graph = recommend(ROOT / "tests/plans/huge-budget.yaml")
    assert graph.labels_spent() <= 2 * 7500  # reuse allowed: each label at most twice
    assert "Stage 3" in result.best.structure.label
    spec, ctx, result, graph = recommend(ROOT / "tests/plans/tiny-budget.yaml")
    assert graph.estimated.gpu_hours <= 2.0 and graph.stages[0].kind in ("grpo", "probe")


def test_single_small_gpu_falls_back_to_lora_and_sequence_fkl():
    spec, ctx, result, graph = recommend(ROOT / "tests/plans/small-gpu.yaml")
    assert all(s.estimated.peak_mem_gb_per_gpu <= 24 for s in graph.stages)
    assert any((s.estimated.strategy or "").startswith("lora") for s in graph.stages if s.kind == "grpo")
    assert result.infeasible  # the structures that do not fit are named, not silently dropped


def test_infeasible_plans_say_which_budget_is_short():
    with pytest.raises(InfeasibleError, match=r"GPU-hours is short by [0-9.]+ GPU-hours"):
        allocate(Context.from_spec(load_plan(ROOT / "tests/plans/impossible-budget.yaml")))
    with pytest.raises(InfeasibleError, match=r"GPU memory is short by [0-9.]+ GB per GPU"):
        allocate(Context.from_spec(load_plan(ROOT / "tests/plans/no-memory.yaml")))


def test_pins_are_respected():
    path = ROOT / "plans/budget.yaml"
    _, _, _, g = recommend(path, teacher="Qwen/Qwen3-14B", bridge="opd", stage3=False, probe=False)
    assert [s.id for s in g.stages] == ["teacher_grpo", "student_opd", "final_eval"]
    assert g.stage("teacher_grpo").policy == "Qwen/Qwen3-14B"
    _, _, _, g = recommend(path, group_size=4, teacher_labels=5000, steps={"teacher_grpo": 100}, probe=True)
    t = g.stage("teacher_grpo")
    assert t.params.num_generations == 4 and t.data.labeled.count == 5000 and t.params.steps == 100
    assert g.stages[0].id == "probe" and g.stages[0].data.labeled.spend is False
    _, _, _, g = recommend(path, teacher="none")
    assert [s.id for s in g.stages if s.id != "probe"] == ["direct_grpo", "final_eval"]


def test_search_is_seeded_and_beats_random_search():
    spec = load_plan(ROOT / "plans/budget.yaml")
    a = allocate(Context.from_spec(spec))
    b = allocate(Context.from_spec(spec))
    assert a.best.quantities == b.best.quantities
    rand = random_search(Context.from_spec(spec), 2000)
    assert a.best.prediction.value >= rand.value - 0.002
    for name in ("tiny-budget", "small-gpu"):  # budget-bound and memory-bound spaces
        ctx = Context.from_spec(load_plan(ROOT / f"tests/plans/{name}.yaml"))
        best = allocate(ctx).best.prediction.value
        assert best >= random_search(ctx, 1500, project=True).value - 0.002, name


def test_tiny_cpu_plan_is_tiny():
    spec, ctx, result, graph = recommend(ROOT / "plans/tiny-cpu.yaml")
    assert graph.estimated.gpu_hours <= 0.05
    for st in graph.stages:
        params = st.params.model_dump()
        assert (params.get("steps") or 0) <= 12
        assert params.get("max_completion_length", 0) <= 48 and params.get("max_new_tokens", 0) <= 48
        for part in (st.data.labeled, st.data.prompts):
            if part is not None:
                assert Path(part.source).is_absolute()
        assert not st.policy.startswith("..")
    assert graph.stage("final_eval").params.k <= 2


def test_optuna_starts_from_the_rule_based_default():
    spec, ctx, result, graph = recommend(ROOT / "plans/budget.yaml")
    optuna = graph.meta["search"]["optuna"]
    assert optuna["first_trial"]["structure"] == "GRPO Qwen3-8B -> FKL->OPD -> Stage 3 GRPO"
    assert optuna["sampler"] == "TPESampler" and 8 <= optuna["trials"] <= 64


def test_conflicting_pins_are_explained():
    path = ROOT / "plans/llama-cross-family.yaml"
    doc = read_yaml(path)
    doc.data["pins"] = {"teacher": "Qwen/Qwen3-14B", "bridge": "opd"}
    spec = parse_plan(doc, source=str(path), base_dir=path.parent)
    with pytest.raises(InfeasibleError, match="tokenizer"):
        allocate(Context.from_spec(spec))


def test_short_labels_are_named():
    path = ROOT / "plans/budget.yaml"
    doc = read_yaml(path)
    doc.data["pins"] = {"teacher_labels": 7500, "stage3": True}
    spec = parse_plan(doc, source=str(path), base_dir=path.parent)
    with pytest.raises(InfeasibleError, match="labels are short"):
        allocate(Context.from_spec(spec))
    doc.data["pins"] = {"teacher_labels": 7500}
    spec = parse_plan(doc, source=str(path), base_dir=path.parent)
    ctx = Context.from_spec(spec)
    graph = compile_graph(ctx, allocate(ctx))
    assert rule_problems(spec, graph) == [] and "student_grpo" not in [s.id for s in graph.stages]


def test_random_plans_never_break_a_rule(tmp_path):
    """Seeded random plans: each one either compiles to a rule-abiding graph or raises
    InfeasibleError naming the short budget (a wider sweep of 450 plans passes too)."""
    import random

    import yaml

    from s2d_plan.plan.registry import known_gpus, known_models

    rng = random.Random(7)
    models = known_models()
    outcomes = {"graph": 0, "infeasible": 0}
    for i in range(12):
        student = rng.choice(models)
        plan = {"name": f"fuzz{i}", "objective": {"eval": rng.choice(["math500", "math", "aime24"])},
                "student": student, "teachers": rng.sample([m for m in models if m != student], rng.randint(0, 3)),
                "data": {"labeled": {"source": "org/labels", "size": rng.choice([0, 3, 300, 20000])},
                         "reuse_labels": rng.random() < 0.3},
                "compute": {"gpu": rng.choice([g for g in known_gpus() if g != "cpu"]), "gpus": rng.choice([1, 8]),
                            "hours": rng.choice([0.05, 10, 1000])},
                "eval": [{"name": "math500"}, {"name": "math"}, {"name": "aime24"}]}
        path = tmp_path / f"{i}.yaml"
        path.write_text(yaml.safe_dump(plan))
        spec = load_plan(path)
        try:
            ctx = Context.from_spec(spec)
            graph = compile_graph(ctx, allocate(ctx, trials=16))
        except InfeasibleError as exc:
            assert "short" in str(exc) or "pins" in str(exc)
            outcomes["infeasible"] += 1
            continue
        assert rule_problems(spec, graph) == [], plan
        outcomes["graph"] += 1
    assert outcomes["graph"] >= 4 and outcomes["infeasible"] >= 1
