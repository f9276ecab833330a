"""Running one world: the fixed arms, then the policies (allocator, calibrated allocator, adaptive).

Every run goes through the executor into the world's own home (``ROOT/<world>``), so that a
world's history is its own: the leave-one-world-out calibration of world W reads the homes
of the other worlds only (``calibrate(..., sources=...)``) and is written to
``ROOT/<world>/lowo``, where W's allocator and adaptive policy plan.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tinyworld import lab as tw
from tinyworld.worlds.arms import PLAN, WorldArms, graph_for, models_of, sizes_for
from tinyworld.worlds.spec import World, model_path

FIXED = ["base", "a", "c", "b", "f", "d", "e", "a-matched", "g"]  # in the order they run
RECIPE_ORDER = ("f", "c", "b")  # "the paper's recipe": with Stage 3 where labels allow, else without


def world_sizes(world: World, eval_size: int | None = None, eval_k: int | None = None, scale: float = 1.0):
    from tinyworld.worlds.spec import base_world

    model_path(world, world.student)  # built, or a clear error saying how to build it
    _, t = model_path(world, world.teacher)
    max_new = json.loads((base_world(world.difficulty) / "world.json").read_text())["max_new_tokens"]
    kw = {k: v for k, v in (("eval_size", eval_size), ("eval_k", eval_k)) if v}
    return sizes_for(world, t["params"], max_new, **kw)


def measured(home: Path, world: str, seed: int) -> dict[str, dict[str, float]]:
    """arm -> stage id -> measured CPU-hours of this world's seed (wherever a stage ran: a CACHED
    stage's hours are those of the run that computed it)."""
    from s2d_plan.history.read import query

    _, rows = query("""SELECT json_extract_string(r.graph, '$.meta.arm') AS arm, s.stage_id, max(done.h)
                       FROM runs r JOIN stages s USING (run_id)
                       JOIN (SELECT cache_key, max(gpu_hours) AS h FROM stages WHERE status = 'FINISHED'
                             GROUP BY cache_key) done USING (cache_key)
                       WHERE r.plan = ? AND r.status = 'FINISHED' AND s.kind <> 'eval'
                         AND json_extract_string(r.graph, '$.meta.world') = ?
                         AND CAST(json_extract(r.graph, '$.meta.seed') AS INT) = ? GROUP BY ALL""",
                     home, [PLAN, world, seed])
    out: dict[str, dict[str, float]] = {}
    for arm, sid, h in rows:
        out.setdefault(arm, {})[sid] = h
    return out


def matched_steps(hours: dict, sz, recipe: str) -> tuple[int | None, int | None, str]:
    """a-matched's GRPO steps (the recipe's measured time over a direct GRPO step's) and g's OPD
    steps (Stage 3's measured time over an OPD step's), and a line saying so."""
    a_steps = replay = None
    why = []
    direct = hours.get("a", {}).get("direct_grpo")
    spent = sum(hours.get(recipe, {}).values())
    if direct and spent:
        a_steps = max(2, round(spent / (direct / sz.grpo_steps)))
        why.append(f"a-matched {a_steps} GRPO steps = {recipe}'s {spent * 3600:.0f}s at "
                   f"{direct * 3600 / sz.grpo_steps:.2f}s/step")
    s3, opd = hours.get("f", {}).get("student_grpo"), hours.get("c", {}).get("student_opd")
    if s3 and opd:
        replay = max(2, round(s3 / (opd / sz.opd_steps)))
        why.append(f"g {replay} OPD steps = Stage 3's {s3 * 3600:.0f}s at {opd * 3600 / sz.opd_steps:.2f}s/step")
    return a_steps, replay, "; ".join(why)


def run_fixed(world: World, seed: int, home: Path, cache: Path, sz, arms: list[str]) -> None:
    """The fixed arms for one seed; a-matched and g after the arms their time is matched to."""
    models = models_of(world)
    wa = WorldArms(world, sz, seed, cache)
    first = wa.arms()
    recipe = next((r for r in RECIPE_ORDER if r in first), None)
    for arm in [a for a in FIXED if a in first and a in arms]:
        _execute(graph_for(world, arm, seed, *first[arm], models, sz), home)
    steps, replay, why = matched_steps(measured(home, world.name, seed), sz, recipe or "a")
    print(f"  [{world.name} seed {seed}] matched in measured time: {why or 'nothing to match'}", flush=True)
    later = wa.arms(matched_steps=steps, replay_steps=replay)
    for arm in ("a-matched", "g"):
        if arm in later and arm in arms:
            _execute(graph_for(world, arm, seed, *later[arm], models, sz), home)
    rematch(world, seed, home, sz, wa, models, arms, {"a-matched": steps, "g": replay}, recipe)


def rematch(world: World, seed: int, home: Path, sz, wa: WorldArms, models, arms: list[str], steps: dict,
            recipe: str | None) -> None:
    """One correction where a matched arm's measured time missed its target by over 20%: a short
    run's time per step carries its start-up, so the first match undershoots (seen: 49 steps
    meant to take f's 88 s took 39 s). The rerun replaces it (the table takes the latest run)."""
    hours = measured(home, world.name, seed)
    targets = {"a-matched": (sum(hours.get(recipe, {}).values()), "direct_grpo", "matched_steps"),
               "g": (hours.get("f", {}).get("student_grpo"), "student_replay", "replay_steps")}
    for arm, (want, sid, key) in targets.items():
        got, n = hours.get(arm, {}).get(sid), steps.get(arm)
        if arm not in arms or not (want and got and n) or abs(got / want - 1) <= 0.2:
            continue
        n2 = max(2, round(n * want / got))
        print(f"  [{world.name} seed {seed}] {arm}: {n} steps took {got * 3600:.0f}s for a target of "
              f"{want * 3600:.0f}s; rerun with {n2}", flush=True)
        _execute(graph_for(world, arm, seed, *wa.arms(**{key: n2})[arm], models, sz), home)


def _execute(graph, home: Path) -> str:
    """tinyworld's execute; a run stopped by a signal (Ctrl-C, SIGTERM) stops the benchmark too."""
    from s2d_plan.history.read import query

    run_id = tw.execute(graph, home)
    if query("SELECT status FROM runs WHERE run_id = ?", home, [run_id])[1] == [("KILLED",)]:
        raise SystemExit(f"run {run_id} was stopped: the benchmark stops here (rerun to resume from the cache)")
    return run_id


# ---------------------------------------------------------------- the planner's policies


def policy_budget(world: World, home: Path, seed: int) -> float:
    """The CPU-hours every policy gets: what the paper's recipe (f, else c, else b) MEASURED in
    this world's history (its stage sizes were scaled to ``hours`` by per-step seconds measured
    elsewhere, and shared cores run slower or faster), never less than ``hours``."""
    hours = measured(home, world.name, seed)
    spent = next((sum(hours[r].values()) for r in RECIPE_ORDER if hours.get(r)), 0.0)
    return round(max(world.hours, spent), 5)


def plan_yaml(world: World, home: Path, sz, cache: Path, adaptive: dict | None = None,
              budget: float | None = None) -> Path:
    """plans/tinyworld.yaml pointed at this world: its models, labels, prompts, budget."""
    import yaml

    student, teacher, rs, rt = models_of(world)
    wa = WorldArms(world, sz, 0, cache)
    plan = yaml.safe_load((tw.REPO / "plans" / "tinyworld.yaml").read_text())
    plan["name"] = f"worlds-{world.name}"
    for entry, m, r in ((plan["student"], student, rs), (plan["teachers"][0], teacher, rt)):
        entry.update(model=m.name, params_b=m.params_b, vocab=m.vocab, layers=m.layers, hidden=m.hidden,
                     accuracy={tw.OBJECTIVE: round(r.mean, 4)})
    plan["data"]["labeled"].update(source=str(wa.data / "labeled.jsonl"), size=max(world.labels, 1))
    plan["data"]["prompts"].update(source=str(wa.data / "prompts.jsonl"), size=world.prompts)
    plan["eval"][0].update(source=str(wa.data / "eval.jsonl"), size=sz.eval_size)
    plan["compute"]["hours"] = budget or world.hours
    plan["pins"]["steps"] = {"teacher_grpo": sz.grpo_steps, "direct_grpo": sz.grpo_steps,
                             "student_grpo": sz.grpo_steps, "student_fkl": max(2, sz.rollouts // sz.fkl_batch),
                             "student_opd": sz.opd_steps}
    if adaptive:
        plan["adaptive"] = adaptive
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"plan-{world.name}{'-adaptive' if adaptive else ''}.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def lowo_home(world: World, root: Path, others: list[str]) -> Path:
    """ROOT/<world>/lowo with a calibration fitted on the other worlds' homes only."""
    from s2d_plan.evidence.from_runs import calibrate

    cal = root / world.name / "lowo"
    cal.mkdir(parents=True, exist_ok=True)
    sources = [root / o for o in others if o != world.name and (root / o / "history.duckdb").exists()]
    report = calibrate(cal, sources=sources)
    fit = report["fit"]
    print(f"  [{world.name}] calibrated on {len(sources)} other world(s), {fit['runs']} runs: RMSE "
          f"{fit['rmse_before'] * 100:.1f} -> {fit['rmse_after'] * 100:.1f} points", flush=True)
    return cal


def run_allocator(world: World, seed: int, home: Path, plan_home: Path, sz, cache: Path, tag: str) -> None:
    """The allocator's pick for the world (planned in ``plan_home``), trained and evaluated like every arm."""
    plan = plan_yaml(world, plan_home, sz, cache, budget=policy_budget(world, home, seed))
    g = tw.recommended(plan, plan_home, seed, WorldArms(world, sz, seed, cache), tag)
    doc = json.loads(g.model_dump_json())
    doc["plan"] = PLAN
    doc["meta"] = {**doc["meta"], "world": world.name, "world_spec": world.spec(), "arm": tag}
    from s2d_plan.graph import StageGraph

    _execute(StageGraph.model_validate(doc), home)


def adaptive_available() -> bool:
    from s2d_plan import api

    return hasattr(api, "execute_adaptive")


def run_adaptive(world: World, seed: int, home: Path, plan_home: Path, sz, cache: Path) -> str | None:
    """``execute_adaptive(plan)`` in ``plan_home``; its final model then gets the benchmark's
    eval in the world's home, its compute (every stage of every run of the session) in the meta."""
    from s2d_plan import api

    if not adaptive_available():
        print("adaptive: not available in this checkout", flush=True)
        return None
    plan = plan_yaml(world, plan_home, sz, cache, adaptive={"pilot_share": 0.12, "holdout": 64, "max_candidates": 4},
                     budget=policy_budget(world, home, seed))
    t0 = time.time()
    res = api.execute_adaptive(plan, home=plan_home)
    print(f"  [{world.name} seed {seed}] adaptive session {res.session}: exit {res.exit_code} in "
          f"{time.time() - t0:.0f}s", flush=True)
    final, hours = _session_outcome(plan_home, res.session, res.run_id)
    if final is None:  # the session chose to train nothing: its result is the student as it is
        print(f"  [{world.name}] adaptive: the final run trained nothing; the student as it is is evaluated",
              flush=True)
        final = models_of(world)[0].name
    return _eval_model(world, seed, home, sz, cache, final, hours, res.session)


def _session_outcome(plan_home: Path, session: str, run_id: str) -> tuple[str | None, float]:
    """The final run's last trained model (path) and the session's measured CPU-hours, all runs."""
    from s2d_plan.history.read import query

    _, h = query("""SELECT sum(hours) FROM (
                    SELECT DISTINCT s.cache_key, done.hours FROM runs r JOIN stages s USING (run_id)
                    JOIN (SELECT cache_key, max(gpu_hours) AS hours FROM stages WHERE status = 'FINISHED'
                          GROUP BY cache_key) done USING (cache_key)  -- a cached stage costs what it cost
                    WHERE json_extract_string(r.graph, '$.meta.adaptive.session') = ?
                      AND s.status IN ('FINISHED', 'CACHED')
                      -- pilots' evals are spent budget; the final run's own eval is not (as for every arm)
                      AND NOT (json_extract_string(r.graph, '$.meta.adaptive.role') = 'final' AND s.kind = 'eval'))""",
                 plan_home, [session])
    # the final run's last training stage; its output (model/) may have been computed by a pilot
    _, out = query("""SELECT output_dir FROM stages WHERE run_id = ? AND kind IN ('grpo', 'opd', 'fkl')
                        AND status IN ('FINISHED', 'CACHED') AND output_dir IS NOT NULL
                      ORDER BY position DESC LIMIT 1""", plan_home, [run_id])
    model = Path(out[0][0]) / "model" if out else None
    return (str(model) if model is not None and model.is_dir() else None), float(h[0][0] or 0.0)


def _eval_model(world: World, seed: int, home: Path, sz, cache: Path, model: str, hours: float, session: str) -> str:
    from s2d_plan.graph import StageGraph

    wa = WorldArms(world, sz, seed, cache)
    doc = {"plan": PLAN, "stages": [wa.evaluation(model)],
           "meta": {"arm": "adaptive", "seed": seed, "world": world.name, "world_spec": world.spec(),
                    "structure": "adaptive", "session": session, "cpu_hours": hours, "labels": world.labels,
                    "prompts": world.prompts}}
    return _execute(StageGraph.model_validate(doc), home)
