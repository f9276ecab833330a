"""The fixed arms of one world, sized to its compute budget.

The stage builders are benchmarks.tinyworld's (``Arms``): the same stage ids, params and
evaluation, so equal stages share cache keys. What a world changes:

- labels: direct GRPO (a, a-matched) spends all ``labels``; the paper's recipe holds half out
  for Stage 3 (f) and gives the teacher the other half (Stage 1 of c, d, e, f, g);
- sizes: every step count is tinyworld's default times one scale, chosen so that the full
  recipe (f) is estimated to cost the world's ``hours`` (per-step seconds measured in the
  d1 benchmark, the teacher's GRPO and rollouts scaled by its size); the table reports the
  MEASURED CPU-hours of every arm;
- a-matched (direct GRPO at the recipe's compute) and g (replay at Stage 3's compute) are
  matched in measured time: their steps come from this world's history (f, c, a), not from
  step counts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tinyworld import lab as tw
from tinyworld.worlds.spec import World, data_dir, model_path

PLAN = "worlds-bench"
# seconds per unit, measured in benchmarks/results/tinyworld-d1.md (two shared cores): a GRPO
# step of the 2x64 student, a GRPO step of the 4x128 teacher, 2048 teacher rollouts plus
# their FKL epoch, an OPD step
SEC_GRPO_STUDENT, SEC_GRPO_TEACHER, SEC_BRIDGE_FKL, SEC_OPD = 0.42, 0.84, 31.0, 0.18
EVAL_SIZE, EVAL_K = 256, 4


def _teacher_factor(params: int) -> float:
    """Per-step cost of a model relative to the 4x128 teacher (0.42 s at 143k params, 0.84 s at 1.02M)."""
    return (params / 1_023_744) ** 0.35


def sizes_for(world: World, teacher_params: int, max_new: int, eval_size: int = EVAL_SIZE,
              eval_k: int = EVAL_K) -> tw.Sizes:
    """tinyworld's sizes scaled so that the recipe (f) is estimated at ``world.hours``."""
    d = tw.Sizes()
    tf = _teacher_factor(teacher_params)
    unit = (SEC_GRPO_TEACHER * tf * d.grpo_steps + SEC_BRIDGE_FKL * tf + SEC_OPD * d.opd_steps
            + SEC_GRPO_STUDENT * d.grpo_steps)
    s = world.hours * 3600 / unit
    half = max(world.prompts // 2, 1)
    return replace(d, labels=world.labels - world.labels // 2, held_out=world.labels // 2,
                   grpo_steps=max(2, round(d.grpo_steps * s)), matched_steps=max(2, round(d.grpo_steps * s)),
                   rollouts=max(16, min(half, round(d.rollouts * s))), opd_steps=max(2, round(d.opd_steps * s)),
                   opd_prompts=max(16, min(half, round(d.opd_prompts * s))), eval_size=eval_size, eval_k=eval_k,
                   max_new=max_new)


class WorldArms(tw.Arms):
    """tinyworld's stage builders pointed at a world's models and data."""

    def __init__(self, world: World, sz: tw.Sizes, seed: int, cache: Path):
        s_path, _ = model_path(world, world.student)
        t_path, _ = model_path(world, world.teacher)
        super().__init__(s_path.parent, sz, seed)
        self.world = world
        self.student, self.teacher, self.data = str(s_path), str(t_path), data_dir(world, cache)

    def arms(self, matched_steps: int | None = None, replay_steps: int | None = None) -> dict:
        """arm -> (stages, resources); arms a world's labels cannot feed are left out."""
        sz, w = self.sz, self.world
        n1, n3, total = sz.labels, sz.held_out, w.labels
        tg, rl = self.grpo("teacher_grpo", self.teacher, 0, max(n1, 1), sz.grpo_steps), "@teacher_grpo"
        bridge_q = dict(fkl_rollouts=sz.rollouts, opd_rollouts=sz.opd_steps * sz.prompts_per_step)
        t_epochs = sz.grpo_steps * sz.prompts_per_step / max(n1, 1)
        teach = dict(teacher=True, teacher_labels=n1, teacher_epochs=t_epochs)
        pool = sz.rollouts + sz.opd_prompts
        out = {"base": ([], 0, 0, {}), "b": (self.bridge(self.teacher), 0, pool, dict(teacher=True, **bridge_q))}
        if total >= 1:
            out["a"] = ([self.grpo("direct_grpo", self.student, 0, total, sz.grpo_steps)], total, 0,
                        dict(student_labels=total, student_epochs=sz.grpo_steps * sz.prompts_per_step / total))
        if matched_steps and total >= 1:
            out["a-matched"] = ([self.grpo("direct_grpo", self.student, 0, total, matched_steps)], total, 0,
                                dict(student_labels=total, student_epochs=matched_steps * sz.prompts_per_step / total))
        if n1 >= 1:
            out["c"] = ([tg] + self.bridge(rl), n1, pool, dict(**teach, **bridge_q))
            out["d"] = ([tg] + self.bridge(rl, opd=False), n1, sz.rollouts, dict(**teach, fkl_rollouts=sz.rollouts))
            out["e"] = ([tg] + self.bridge(rl, fkl=False), n1, sz.opd_prompts,
                        dict(**teach, opd_rollouts=bridge_q["opd_rollouts"]))
        if n1 >= 1 and n3 >= 1:
            s3 = self.grpo("student_grpo", "@student_opd", n1, n3, sz.grpo_steps)
            out["f"] = ([tg] + self.bridge(rl) + [s3], n1 + n3, pool,
                        dict(**teach, student_labels=n3, student_epochs=sz.grpo_steps * sz.prompts_per_step / n3,
                             **bridge_q))
            if replay_steps:
                replay = self.opd("student_replay", "@student_opd", rl, sz.rollouts, replay_steps)
                out["g"] = ([tg] + self.bridge(rl) + [replay], n1, pool,
                            dict(**teach, replay_rollouts=replay_steps * sz.prompts_per_step, **bridge_q))
        return {arm: (stages + [self.evaluation("@" + stages[-1]["id"] if stages else self.student)],
                      {"labels": labels, "prompts": prompts, "pipeline": q})
                for arm, (stages, labels, prompts, q) in out.items()}


def models_of(world: World):
    """(student ModelInfo, teacher ModelInfo, student rates, teacher rates) as tinyworld's graph_of wants."""
    from s2d_plan.plan.registry import ModelInfo
    from s2d_plan.predict.outcome import SolveRates

    def one(m) -> tuple:
        path, info = model_path(world, m)
        tok = json.loads((path / "tokenizer.json").read_text()) if (path / "tokenizer.json").exists() else None
        vocab = len(tok["model"]["vocab"]) + len(tok.get("added_tokens", [])) if tok else 307
        acc = next(v for k, v in info["base"].items() if k.startswith("avg@"))
        return (ModelInfo(name=str(path), params_b=info["params"] / 1e9, layers=info["layers"], hidden=info["hidden"],
                          heads=4, kv_heads=2, vocab=vocab, tokenizer="tinyworld-digits", context=256),
                SolveRates(max(acc, 0.005), source="tinyworld build (held-out avg@k)"))

    (s, rs), (t, rt) = one(world.student), one(world.teacher)
    return s, t, rs, rt


def graph_for(world: World, arm: str, seed: int, stages: list[dict], res: dict, models, sz: tw.Sizes):
    """tinyworld's graph for an arm, as a run of this benchmark tagged with its world."""
    from s2d_plan.graph import StageGraph

    g = tw.graph_of(arm, seed, stages, res, models, sz)
    doc = json.loads(g.model_dump_json())
    doc["plan"] = PLAN
    for st in doc["stages"]:  # the cost model's estimate: measured / estimated is what calibrate fits
        st["estimated"] = {"gpu_hours": estimate(st, models, sz)}
    doc["meta"] = {**doc["meta"], "world": world.name, "world_spec": world.spec()}
    return StageGraph.model_validate(doc)


def estimate(st: dict, models, sz: tw.Sizes) -> float:
    """The planner's cost model for one arm stage (the tiny scale's prompt length, one CPU)."""
    from s2d_plan.plan.registry import gpu_info
    from s2d_plan.predict import costs

    student, teacher = models[0], models[1]
    cpu, p, kind = gpu_info("cpu"), st["params"], st["kind"]
    model = teacher if st["policy"] in (teacher.name, "@teacher_grpo") else student
    plen, new, pps = 24, sz.max_new, sz.prompts_per_step
    if kind == "grpo":
        est = costs.grpo_cost(model, cpu, 1, p["steps"] * pps, sz.group, plen, new, pps)
    elif kind == "rollout":
        est = costs.rollout_cost(model, cpu, 1, st["data"]["prompts"]["count"], plen, new)
    elif kind == "fkl":
        est = costs.fkl_cost(student, model, cpu, 1, sz.rollouts, 1.0, plen, new, False)
    elif kind == "opd":
        est = costs.opd_cost(student, teacher, cpu, 1, p["steps"] * pps, plen, new, pps)
    else:
        est = costs.eval_cost(model, cpu, 1, sz.eval_size, sz.eval_k + 1, plen, new)
    return round(est.gpu_hours, 8)
