"""Adaptive execution (`execute PLAN --adaptive`): the pure decisions, bad input, and a real
session on the shipped tinyworld models (pilots, the choice, the final run), killed with
SIGKILL mid-pilot and resumed without re-running what had finished."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import REPO, wait_for

from s2d_plan.adaptive import pilots as P
from s2d_plan.allocate.space import Structure
from s2d_plan.errors import ConfigurationError, PlanError
from s2d_plan.history.read import query
from s2d_plan.plan.spec import load_plan

WORLD = REPO / "tinyworld" / "pretrained" / "d1"


def tiny_plan(path: Path, **adaptive) -> Path:
    """plans/tinyworld.yaml on the shipped d1 world, small evals, the structure free."""
    p = yaml.safe_load((REPO / "plans" / "tinyworld.yaml").read_text())
    p["student"]["model"], p["teachers"][0]["model"] = str(WORLD / "student"), str(WORLD / "teacher")
    p["data"]["labeled"]["source"] = str(WORLD / "data" / "labeled.jsonl")
    p["data"]["prompts"]["source"] = str(WORLD / "data" / "prompts.jsonl")
    p["eval"][0].update(source=str(WORLD / "data" / "eval.jsonl"), size=16)
    p["compute"]["hours"] = adaptive.pop("hours", 0.05)
    p["pins"] = adaptive.pop("pins", {"probe": False, "group_size": 8})
    p["data"]["labeled"]["size"] = adaptive.pop("labels", 512)
    p["adaptive"] = {"holdout": 16, "max_candidates": 3, "rounds": 1, "pilot_share": 0.3, **adaptive}
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


# ---------------------------------------------------------------- decisions, no runs


def test_pilot_share_of_the_whole_budget_is_refused(tmp_path):
    with pytest.raises(PlanError, match="pilot_share 1.5 would spend the whole budget"):
        load_plan(tiny_plan(tmp_path / "p.yaml", pilot_share=1.5))


def test_too_few_labels_to_hold_out_is_refused(tmp_path):
    spec = load_plan(tiny_plan(tmp_path / "p.yaml", labels=20))
    with pytest.raises(ConfigurationError, match="20 labels with a holdout of 16 leave 4 to train on"):
        P.holdout_size(spec)
    spec = load_plan(tiny_plan(tmp_path / "q.yaml", labels=512, holdout=None))
    assert P.holdout_size(spec) == 64  # an eighth of the labels by default
    train = P.training_spec(spec, 64)
    assert train.data.labeled.size == 448 and train.resolve_path("x.jsonl") == spec.resolve_path("x.jsonl")


def test_groups_are_first_stages():
    assert P.group_of(Structure(direct=True)) == "student"
    assert P.group_of(Structure("t", True, "fkl+opd", stage3=True)) == "teacher"
    assert P.group_of(Structure("t", False, "opd")) == "bridge"
    assert P.group_of(Structure("u", False, "opd"), ["t", "u"]) == "bridge1"
    assert P.group_of(Structure("t", False, "fkl")) is None  # no short prefix
    assert P.group_of(Structure()) is None


def grpo(sid, policy, steps, needs=()):
    return {"id": sid, "kind": "grpo", "policy": policy, "needs": list(needs),
            "data": {"labeled": {"source": "l.jsonl", "offset": 0, "count": 64}},
            "params": {"steps": steps, "save_steps": 1, "prompts_per_step": 4}}


def test_splice_continues_the_pilot_and_drops_a_stage_it_finished():
    pilots = [dict(grpo("pilot_teacher_0", "T", 4)), dict(grpo("pilot_teacher_1", "@pilot_teacher_0", 4,
                                                                 ["pilot_teacher_0"]))]
    final = [grpo("teacher_grpo", "T", 20), {"id": "student_opd", "kind": "opd", "policy": "S",
                                             "teacher": "@teacher_grpo", "needs": ["teacher_grpo"], "data": {},
                                             "params": {"steps": 5}}]
    out = P.splice(final, pilots, "teacher", 2)
    assert [d["id"] for d in out] == ["pilot_teacher_0", "pilot_teacher_1", "teacher_grpo", "student_opd"]
    assert out[2]["policy"] == "@pilot_teacher_1" and out[2]["params"]["steps"] == 12
    assert out[:2] == pilots  # unchanged: the cache serves them
    short = [grpo("teacher_grpo", "T", 9)] + final[1:]
    out = P.splice(short, pilots, "teacher", 2)  # 9 - 8 = 1 step left: the pilot is the stage
    assert [d["id"] for d in out] == ["pilot_teacher_0", "pilot_teacher_1", "student_opd"]
    assert out[2]["teacher"] == "@pilot_teacher_1" and out[2]["needs"] == ["pilot_teacher_1"]
    rollouts = {"id": "teacher_rollouts", "kind": "rollout", "policy": "T", "needs": [], "data": {}, "params": {}}
    out = P.splice([rollouts] + short, pilots, "teacher", 2)  # stages before the piloted one appear once
    assert [d["id"] for d in out] == ["pilot_teacher_0", "pilot_teacher_1", "teacher_rollouts", "student_opd"]


def test_a_raw_bridge_continues_its_pilot_only_when_it_is_opd_alone():
    assert P.continues(Structure("t", False, "opd"), "bridge")
    assert not P.continues(Structure("t", False, "fkl+opd"), "bridge")  # its OPD starts after FKL
    assert P.continues(Structure("t", True, "fkl+opd", stage3=True), "teacher")
    assert P.continues(Structure(direct=True), "student") and not P.continues(Structure(), None)


def test_sigmoid_curve_recovers_a_saturating_curve():
    r0, a, mid = 0.5, 0.85, 40.0
    pts = [(c, r0 + (a - r0) / (1 + mid / c)) for c in (10, 20, 40, 80)]
    fit = P.sigmoid_curve(pts, r0, 400)
    assert abs(fit["asymptote"] - a) < 0.01 and abs(fit["c_mid"] - mid) < 2
    assert abs(fit["predicted"] - (r0 + (a - r0) / (1 + mid / 400))) < 0.01
    assert P.sigmoid_curve(pts[:2], r0, 400) is None  # two points fit any asymptote
    three = P.sigmoid_curve(pts[:3], r0, 400)
    assert three["exponent"] == 1.0 and abs(three["asymptote"] - a) < 0.02


# ---------------------------------------------------------------- real sessions


def decisions(home: Path) -> list[tuple]:
    return query("SELECT session, seq, kind, run_id, chosen, why FROM decisions ORDER BY session, seq", home)[1]


def test_one_candidate_runs_as_recommended(tmp_path, cli, s2d_home):
    plan = tiny_plan(tmp_path / "one.yaml", pins={"probe": False, "teacher": "none", "stage3": False},
                     max_candidates=1)
    r = cli("execute", str(plan), "--adaptive", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = decisions(s2d_home)
    assert [k for _, _, k, *_ in rows] == ["candidates", "choose", "finished"]
    assert "one candidate: nothing to decide" in rows[1][5]
    final = rows[2][3]
    meta = json.loads(query("SELECT graph FROM runs WHERE run_id = ?", s2d_home, [final])[1][0][0])["meta"]
    assert meta["adaptive"] == {"session": rows[0][0], "role": "final"}


def test_session_killed_mid_pilot_resumes_from_its_last_decision(tmp_path, cli, start_cli, s2d_home):
    plan = tiny_plan(tmp_path / "race.yaml")
    proc = start_cli("execute", str(plan), "--adaptive")

    def first_pilot_finished():
        if proc.poll() is not None:
            pytest.fail(f"the session ended before it was killed: {proc.communicate()[1][-2000:]}")
        try:
            return query("SELECT count(*) FROM stages WHERE stage_id LIKE 'pilot_%' AND stage_id NOT LIKE "
                         "'pilot_eval%' AND stage_id NOT LIKE 'pilot_ref%' AND status = 'FINISHED'",
                         s2d_home)[1][0][0]
        except Exception:
            return 0

    wait_for(first_pilot_finished, timeout=240, every=0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert [k for _, _, k, *_ in decisions(s2d_home)] == ["candidates", "round"]  # killed inside round 0

    r = cli("execute", str(plan), "--adaptive", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming session" in r.stdout
    rows = decisions(s2d_home)
    kinds = [k for _, _, k, *_ in rows]
    assert kinds[0] == "candidates" and kinds[-2:] == ["choose", "finished"] and kinds.count("pilot") == 1
    assert kinds.count("round") == 1  # the round's steps were decided once, before the kill
    assert len({s for s, *_ in rows}) == 1  # one session, continued
    # the pilot training stage that finished before the kill was served by the cache, not re-run
    _, done = query("""SELECT s.stage_id, count(*) FILTER (s.status = 'FINISHED') AS ran,
                              count(*) FILTER (s.status = 'CACHED') AS cached
                       FROM stages s JOIN runs r USING (run_id)
                       WHERE json_extract_string(r.graph, '$.meta.adaptive.role') = 'pilot'
                         AND s.stage_id SIMILAR TO 'pilot_(student|teacher|bridge)[0-9]*_0' GROUP BY ALL""", s2d_home)
    assert done and all(ran == 1 for _, ran, _ in done), done
    assert any(cached >= 1 for _, _, cached in done), done
    final = rows[-1][3]
    show = cli("show", final)
    assert show.returncode == 0 and "adaptive session" in show.stdout and "pilot" in show.stdout
    assert rows[-2][4] in show.stdout  # the chosen structure
    # a finished session is not resumed: a new one starts
    again = cli("execute", str(plan), "--adaptive", timeout=300)
    assert again.returncode == 0 and "resuming" not in again.stdout, again.stderr[-2000:]
    sessions = {s for s, *_ in decisions(s2d_home)}
    assert len(sessions) == 2
    new = (sessions - {rows[0][0]}).pop()
    # (its round sizes come from what this home has measured since, so they may differ); any
    # stage it shares with the first session (same cache key) is served by the cache
    _, shared = query("""SELECT DISTINCT s.stage_id, s.status FROM stages s JOIN runs r USING (run_id)
                         WHERE json_extract_string(r.graph, '$.meta.adaptive.session') = ?
                           AND s.cache_key IN (SELECT s2.cache_key FROM stages s2 JOIN runs r2 USING (run_id)
                                WHERE json_extract_string(r2.graph, '$.meta.adaptive.session') = ?)""",
                      s2d_home, [new, rows[0][0]])
    assert shared and all(status == "CACHED" for _, status in shared), shared


def test_local_speed_recovers_how_much_faster_a_plan_learns():
    """Pilots generated by the model itself with GRPO 20000x faster than the posterior's
    mode: the local fit finds ~20000x, and the rescaled posterior predicts the pilots."""
    from dataclasses import replace

    from s2d_plan.plan.registry import ModelInfo
    from s2d_plan.predict.outcome import Pipeline, SolveRates, predict
    from s2d_plan.predict.posterior import Datum, default_posterior

    post = default_posterior()
    tiny = ModelInfo(name="tiny", params_b=0.00014, layers=2, hidden=64, heads=4, kv_heads=2, vocab=307,
                     tokenizer="t", context=256)
    fast = replace(post.mode, l_rl=post.mode.l_rl / 20000)
    rates = SolveRates(0.5)
    data = []
    for steps in (8, 16, 32):
        q = Pipeline(student_labels=448, student_epochs=steps * 4 / 448)
        data.append(Datum(f"pilot student {steps} steps", tiny, rates, q, predict(tiny, rates, q, fast).value,
                          0.01, "pilot"))
    assert all(d.measured > 0.51 for d in data)  # the pilots did learn
    speeds = P.local_speeds(post, data)
    assert 15000 < speeds["l_rl"]["factor"] < 27000 and speeds["l_rl"]["rmse_after"] < 0.5
    local = P.rescaled(post, speeds)
    assert abs(local.mode.l_rl * speeds["l_rl"]["factor"] - post.mode.l_rl) < 1e-6 * post.mode.l_rl
    assert all(abs(predict(tiny, rates, d.pipeline, local.mode).value - d.measured) < 0.01 for d in data)
    flat = [replace(d, measured=0.5) for d in data]  # no gain measured: nothing to change
    assert "l_rl" not in P.local_speeds(post, flat)


def test_a_vanishing_pilot_share_is_refused(tmp_path):
    """pilot_share 1e-300 left pilots no time at all: refused with the usual range."""
    with pytest.raises(PlanError, match="pilot_share 1e-300 is too small"):
        load_plan(tiny_plan(tmp_path / "p.yaml", pilot_share=1e-300))
