"""The quickstart's pieces (its ~2-minute run is `make quickstart`, not a test): the shipped
tinyworld models and data exist and match their plan, and the graph it executes is the
recommended one plus a base_eval that measures the shipped student like final_eval."""

from __future__ import annotations

import json

from s2d_plan.api import recommend
from s2d_plan.graph import parse_graph
from s2d_plan.plan.spec import load_plan
from tests.conftest import REPO
from tinyworld.quickstart import EVAL_K, WORLD, with_base_eval

PLAN = REPO / "plans" / "quickstart.yaml"


def test_shipped_world_matches_the_plan():
    world = json.loads((WORLD / "world.json").read_text())
    spec = load_plan(PLAN)
    for name, ref in (("student", spec.student), ("teacher", spec.teachers[0])):
        assert (WORLD / name / "model.safetensors").is_file() and (WORLD / name / "config.json").is_file()
        assert ref.info.accuracy["tinyworld"].value == world["models"][name]["base"]["avg@4"]
        assert spec.resolve_path(ref.model) == str((WORLD / name).resolve())
    for part in ("labeled", "prompts", "eval"):
        assert (WORLD / "data" / f"{part}.jsonl").is_file()
    assert sum(1 for _ in open(WORLD / "data" / "labeled.jsonl")) == spec.data.labeled.size


def test_the_quickstart_graph_is_the_recommendation_plus_a_base_eval(tmp_path):
    rec = recommend(PLAN, home=tmp_path / "home")
    path = tmp_path / "g.json"
    path.write_text(rec.graph.to_json())
    g = parse_graph(json.loads(with_base_eval(path, str(PLAN), 64).read_text()))
    base, final = g.stage("base_eval"), g.stage("final_eval")
    assert base.policy == str((WORLD / "student").resolve()) and base.needs == ()
    assert base.params == final.params and base.data == final.data
    assert final.params.k == EVAL_K and final.params.temperature == 1.0 and final.params.greedy
    # the training stages are the allocator's, untouched
    trained = [s for s in g.stages if s.kind != "eval"]
    assert trained == [s for s in rec.graph.stages if s.kind != "eval"]
