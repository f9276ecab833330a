"""Allocator scenarios: every rule holds, budgets and memory are respected, the model
(not a rule) decides the structure, and on plans no other test contains the choices stay
physical: no prediction above the teacher, no tiny stage, no pick worse than an
alternative by more than noise."""

import json
from pathlib import Path

import pytest

from s2d_plan.allocate.allocator import Context, allocate, random_search
from s2d_plan.allocate.choice import full_bridge
from s2d_plan.allocate.explain import graph_meta
from s2d_plan.compiler import compile_graph
from s2d_plan.errors import InfeasibleError
from s2d_plan.graph import parse_graph
from s2d_plan.plan.spec import STAGE_IDS, load_plan, parse_plan
from s2d_plan.plan.yamlio import read_yaml
from s2d_plan.rules import rule_problems

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
    bridged = [a for a in [result.best] + result.alternatives if a.structure.teacher]
    assert bridged and all(a.structure.bridge == "fkl" and "sequence-level" in a.structure.label for a in bridged)
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


def test_few_labels_are_spent_only_where_they_raise_the_prediction():
    """Was: 300 labels always went to the teacher first (a 2-step GRPO). Now a stage that
    adds less than a run's noise is not planned, and no stage is below a useful size.

    What the rule guarantees is relative to the top candidate: the pick is within
    ``STAGE_NOISE`` of it, and no candidate made of fewer of the pick's stages is. (A
    pairwise margin over every simpler label-free candidate is not implied: the threshold
    is not transitive; e6fd814 asserted it and failed here at 0.57 vs 0.75 points.)"""
    from s2d_plan.allocate.choice import STAGE_NOISE, stages_of

    _, ctx, result, graph = recommend(ROOT / "tests/plans/few-labels.yaml")
    assert graph.labels_spent() <= 300
    for st in graph.stages:
        assert (getattr(st.params, "steps", None) or 10) >= 10, st.id
    finals = [result.best] + result.alternatives
    value = {id(a): a.prediction.mean or a.prediction.value for a in finals}
    top = max(value.values())
    best = result.best
    assert value[id(best)] >= top - STAGE_NOISE
    assert not [a for a in finals if stages_of(a.structure) < stages_of(best.structure)
                and value[id(a)] >= top - STAGE_NOISE]


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
    # a pinned OPD step count is the stage's step count whatever OPD batch the search picks
    _, _, _, g = recommend(path, teacher="Qwen/Qwen3-8B", bridge="opd", stage3=False, steps={"student_opd": 150})
    assert g.stage("student_opd").params.steps == 150


def _point(ctx, result, label):
    """The search's own score (at the posterior mode) of its allocation for a structure."""
    from s2d_plan.allocate.space import evaluate

    a = next(a for a in [result.best, *result.alternatives, result.baseline]
             if a is not None and a.structure.label.removeprefix("probe -> ") == label)
    return evaluate(ctx, a.structure, a.quantities).prediction.value


def test_search_is_seeded_and_beats_random_search():
    """Within each structure the local search finds quantities at least as good (at the
    posterior mode) as the best of a uniform random search over the same space."""
    spec = load_plan(ROOT / "plans/budget.yaml")
    ctx = Context.from_spec(spec)
    a = allocate(ctx)
    b = allocate(Context.from_spec(spec))
    assert a.best.quantities == b.best.quantities
    rand = random_search(Context.from_spec(spec), 2000)
    assert _point(ctx, a, rand.structure.label) >= rand.value - 0.002
    for name in ("tiny-budget", "small-gpu"):  # budget-bound and memory-bound spaces
        ctx = Context.from_spec(load_plan(ROOT / f"tests/plans/{name}.yaml"))
        result = allocate(ctx)
        rand = random_search(ctx, 1500, project=True)
        assert _point(ctx, result, rand.structure.label) >= rand.value - 0.002, name


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
    ev = graph.stage("final_eval").params  # sampled avg@4 at T=1: greedy sits at its ceiling on tiny models
    assert (ev.k, ev.temperature, ev.greedy) == (4, 1.0, True)


def test_the_search_records_its_posterior_and_uses_no_optuna():
    """Was: Optuna's first trial was the rule-based default. TPE added nothing measurable
    (benchmarks/recommend_bench.py), so the recommend path no longer runs it."""
    spec, ctx, result, graph = recommend(ROOT / "plans/budget.yaml")
    assert "optuna" not in graph.meta["search"]
    post = graph.meta["search"]["posterior"]
    assert post["data"] == 8 and post["sampler"]["library"].startswith("emcee")


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
            assert "short" in str(exc) or "pins" in str(exc) or "too few" in str(exc)
            outcomes["infeasible"] += 1
            continue
        assert rule_problems(spec, graph) == [], plan
        outcomes["graph"] += 1
    assert outcomes["graph"] >= 4 and outcomes["infeasible"] >= 1


# ---------------------------------------------------------------- plans no other test contains

SCENARIOS = {  # other sizes and families, labels 0 to 50k, one small GPU to 64 GPUs for 200 h
    "qwen0.6b-from-32b-50k": ("Qwen/Qwen3-0.6B", ["Qwen/Qwen3-32B"], 50000, "H100-80GB", 8, 200),
    "qwen4b-from-8b-14b-2k": ("Qwen/Qwen3-4B", ["Qwen/Qwen3-8B", "Qwen/Qwen3-14B"], 2000, "H100-80GB", 8, 24),
    "qwen1.7b-from-32b-zero": ("Qwen/Qwen3-1.7B", ["Qwen/Qwen3-32B"], 0, "H100-80GB", 8, 48),
    "qwen1.7b-64gpus-50k": ("Qwen/Qwen3-1.7B", ["Qwen/Qwen3-8B", "Qwen/Qwen3-32B"], 50000, "H100-80GB", 64, 200),
    "llama1b-from-70b-50k": ("meta-llama/Llama-3.2-1B-Instruct", ["meta-llama/Llama-3.3-70B-Instruct"], 50000,
                             "H100-80GB", 8, 200),
    "llama3b-from-8b-500": ("meta-llama/Llama-3.2-3B-Instruct", ["meta-llama/Llama-3.1-8B-Instruct"], 500,
                            "A100-80GB", 4, 48),
    "qwen0.6b-one-4090-5k": ("Qwen/Qwen3-0.6B", ["Qwen/Qwen3-4B"], 5000, "RTX-4090", 1, 200),
}


def scenario(tmp_path_factory, name):
    import yaml

    student, teachers, labels, gpu, gpus, hours = SCENARIOS[name]
    objective = "math" if "llama" in student.lower() else "math500"
    plan = {"name": name, "objective": {"eval": objective}, "student": {"model": student},
            "teachers": [{"model": t} for t in teachers],
            "data": {"labeled": {"source": "org/labels", "size": labels},
                     "prompts": {"source": "org/prompts", "size": 40000}},
            "compute": {"gpu": gpu, "gpus": gpus, "hours": hours}, "eval": [{"name": objective}]}
    path = tmp_path_factory.mktemp("scenarios") / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return recommend(path)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_stay_physical(tmp_path_factory, name):
    from s2d_plan.allocate.choice import STAGE_NOISE
    from s2d_plan.allocate.space import evaluate

    spec, ctx, result, graph = scenario(tmp_path_factory, name)
    assert rule_problems(spec, graph) == []
    for a in [result.best, *result.alternatives, *([result.baseline] if result.baseline else [])]:
        point = evaluate(ctx, a.structure, a.quantities).prediction
        if a.structure.teacher:  # no prediction above the teacher the student learns from
            assert point.value <= max(point.parts["teacher"], ctx.rates.mean) + 1e-9, a.structure.label
            assert a.prediction.value <= max(point.parts["teacher"], ctx.rates.mean) + 0.01, a.structure.label
        assert a.prediction.low <= a.prediction.value <= a.prediction.high
    for st in graph.stages:  # no stage below a useful size
        if st.kind in ("grpo", "opd", "fkl"):
            assert getattr(st.params, "steps", None) is None or st.params.steps >= ctx.min_steps, st.id
    # the pick is never predicted worse than an available alternative (beyond a run's noise)
    means = [a.prediction.mean for a in result.alternatives + ([result.baseline] if result.baseline else [])]
    assert all(result.best.prediction.mean >= m - STAGE_NOISE for m in means)


def test_zero_labels_and_a_much_stronger_teacher_distill_unless_it_likely_hurts(tmp_path_factory):
    spec, ctx, result, graph = scenario(tmp_path_factory, "qwen1.7b-from-32b-zero")
    assert graph.labels_spent() == 0
    nothing = next((a for a in [result.best] + result.alternatives if a.structure.teacher is None), None)
    if result.best.structure.teacher is None:  # "do nothing" only when distillation likely hurts
        assert full_bridge(ctx, "Qwen/Qwen3-32B")[1] < 0.5
    else:
        assert nothing is None or result.best.prediction.mean > nothing.prediction.mean


def test_doing_nothing_with_zero_labels_shows_the_bridge_it_declined():
    """Qwen3-8B raw into Qwen3-1.7B: the paper measured raw-teacher transfer below the
    student's own 73.0 (71.5), so doing nothing may be right, but only with the evidence."""
    from s2d_plan.allocate.explain import rationale

    _, ctx, result, graph = recommend(ROOT / "tests/plans/zero-labels.yaml")
    if result.best.structure.teacher is None:
        summary, p = full_bridge(ctx, "Qwen/Qwen3-8B")
        assert p < 0.5 and summary["low"] < ctx.rates.mean < summary["high"] + 0.02
        assert any("A full raw bridge from Qwen3-8B" in line for line in rationale(ctx, result))
    else:
        nothing = next(a for a in result.alternatives if a.structure.teacher is None)
        assert result.best.prediction.mean > nothing.prediction.mean


def test_opd_batch_is_searched_to_the_cheapest_batch_of_equal_value():
    """OPD's batch is one of the searched quantities: the outcome model is flat in it, so
    of the ladder's batches the search keeps the cheapest at the pick's predicted value."""
    from dataclasses import replace

    from s2d_plan.allocate.space import box, evaluate

    spec, ctx, result, graph = recommend(ROOT / "plans/budget.yaml")
    best = result.best
    assert "opd" in best.structure.bridge
    ladder = box(ctx, best.structure).opd_batches
    assert len(ladder) > 1 and best.quantities.opd_batch in ladder
    assert graph.stage("student_opd").params.prompts_per_step == best.quantities.opd_batch
    for batch in ladder:
        other = evaluate(ctx, best.structure, replace(best.quantities, opd_batch=batch))
        assert other.gpu_hours >= best.gpu_hours - 1e-6 or other.prediction.value < best.prediction.value - 1e-4
