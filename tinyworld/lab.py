"""tinyworld: the reward-density principle reproduced end to end on a CPU (issue 6).

    python -m benchmarks.tinyworld                 # 3 seeds, every arm (was ~39 min with 500 x avg@8 evals; now 256 x avg@4)
    python -m benchmarks.tinyworld --quick         # a 1-seed smoke run (~3 min once the world is built)
    python -m benchmarks.tinyworld --seeds 0 1 2 3 --difficulty 2

Arms, at equal labeled data (256 labels; Stage 3 adds 256 held-out labels):

    base        the student as pretrained (reference)
    a           direct GRPO on the student (GRPO_STEPS steps)
    a-matched   direct GRPO on the student for the bridge's (c) measured CPU time (steps from
                the history: c's time over a direct GRPO step's)
    b           bridge FKL->OPD from the raw (pre-RL) teacher
    c           teacher GRPO, then the bridge FKL->OPD
    d           (c) with forward-KL only        e  (c) with OPD only
    f           (c), then Stage 3 GRPO on the student with 256 held-out labels
    g           (c), then a replay control: OPD continued on the bridge's prompts for as many
                sampled completions as Stage 3 generates (its compute)
    h           what `s2d-plan recommend plans/tinyworld.yaml` plans (before and after calibrate)
    teacher, teacher-rl   references: the teacher before and after Stage 1, evaluated the same way

Every arm of every seed is one run through the executor into one DuckDB history
(``--home``); stages shared between arms (the teacher's GRPO, its rollouts, the bridge
under f and g) have one cache key and run once per seed. A seed changes RL, sampling and
evaluation randomness, not pretraining. Every arm is evaluated the same way: sampled
avg@k at T=1 and greedy on the held-out eval split (disjoint from all training data).
The table is one SQL query over the history, printed with its result; a PNG plot and a
markdown copy go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s2d_plan.evidence.from_runs import calibrate, outcome_inputs
from s2d_plan.graph import StageGraph
from s2d_plan.plan.registry import ModelInfo
from s2d_plan.predict.outcome import Pipeline, SolveRates

REPO = Path(__file__).resolve().parent.parent
# The world build inherits this (runners get it from the executor): OpenMP threads that
# spin while waiting made GRPO steps 40x slower (0.2 s -> 8-19 s) on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PLAN = "tinyworld-bench"
OBJECTIVE = "tinyworld"


@dataclass(frozen=True)
class Sizes:
    labels: int = 256  # Stage 1 / direct GRPO labels (labeled rows 0..labels-1)
    held_out: int = 256  # Stage 3 labels (the next rows)
    group: int = 8
    prompts_per_step: int = 8
    # The feasibility probe's sizes (issue 6). Three seeds of every arm took 31 minutes here
    # (plus 8 for the teacher references and a second allocator run) on two cores shared
    # with other jobs; a GRPO step is ~0.2 s on idle cores.
    grpo_steps: int = 64
    matched_steps: int = 300  # a-matched when (a) or (c) is not measured; else matched in measured time
    grpo_lr: float = 1e-4
    rollouts: int = 2048  # teacher rollouts (one per prompt of the pool's first half)
    fkl_lr: float = 3e-4
    fkl_batch: int = 16
    opd_steps: int = 300
    opd_lr: float = 3e-4
    opd_prompts: int = 2048  # OPD's fresh prompts (the pool's second half)
    # 256 problems x avg@4 (T=1): binomial sd of one arm's avg@4 is ~1.5-3 points (the first
    # if samples were independent, the second if problems were all-or-nothing); 500 x avg@8
    # made the evals most of a 39-minute run
    eval_size: int = 256
    eval_k: int = 4
    max_new: int = 40  # replaced by the world's (world.json max_new_tokens)


QUICK = Sizes(labels=64, held_out=64, grpo_steps=6, matched_steps=12, rollouts=128, opd_steps=12, opd_prompts=128,
              eval_size=64, eval_k=2)


# ---------------------------------------------------------------- stages


class Arms:
    """Stage dicts of every arm for one seed; equal stages (same id, inputs, params) share cache keys."""

    def __init__(self, world: Path, sz: Sizes, seed: int):
        self.w, self.sz, self.seed = world, sz, seed
        self.student, self.teacher = str(world / "student"), str(world / "teacher")
        self.data = world / "data"

    def labeled(self, offset: int, count: int) -> dict:
        return {"source": str(self.data / "labeled.jsonl"), "offset": offset, "count": count}

    def prompts(self, offset: int, count: int) -> dict:
        return {"source": str(self.data / "prompts.jsonl"), "prompt_field": "problem", "offset": offset, "count": count}

    def grpo(self, sid: str, policy: str, offset: int, count: int, steps: int) -> dict:
        sz = self.sz
        return stage(sid, "grpo", policy, data={"labeled": self.labeled(offset, count)}, params={
            "steps": steps, "num_generations": sz.group, "prompts_per_step": sz.prompts_per_step, "beta": 0.0,
            "loss_type": "dapo", "max_completion_length": sz.max_new, "temperature": 1.0, "seed": self.seed,
            "learning_rate": sz.grpo_lr, "save_steps": max(steps // 2, 1)})

    def bridge(self, teacher: str, fkl: bool = True, opd: bool = True) -> list[dict]:
        sz, out, policy = self.sz, [], self.student
        if fkl:
            out.append(stage("teacher_rollouts", "rollout", teacher, data={"prompts": self.prompts(0, sz.rollouts)},
                             params={"samples_per_prompt": 1, "temperature": 1.0, "max_new_tokens": sz.max_new,
                                     "seed": self.seed, "batch_size": 256}))
            out.append(stage("student_fkl", "fkl", policy, teacher=teacher, data={"rollouts": "@teacher_rollouts"},
                             params={"mode": "sequence", "epochs": 1, "learning_rate": sz.fkl_lr,
                                     "batch_size": sz.fkl_batch, "max_length": 48 + sz.max_new, "seed": self.seed}))
            policy = "@student_fkl"
        if opd:
            out.append(self.opd("student_opd", policy, teacher, sz.rollouts, sz.opd_steps))
        return out

    def opd(self, sid: str, policy: str, teacher: str, offset: int, steps: int) -> dict:
        sz = self.sz
        return stage(sid, "opd", policy, teacher=teacher, data={"prompts": self.prompts(offset, sz.opd_prompts)},
                     params={"steps": steps, "learning_rate": sz.opd_lr, "beta": 1.0,
                             "max_completion_length": sz.max_new, "temperature": 1.0,
                             "prompts_per_step": sz.prompts_per_step, "seed": self.seed,
                             "save_steps": max(steps // 2, 1)})

    def evaluation(self, policy: str) -> dict:
        sz = self.sz
        ev = {"name": OBJECTIVE, "source": str(self.data / "eval.jsonl"), "size": sz.eval_size}
        return stage("final_eval", "eval", policy, data={"eval": [ev]}, params={
            "k": sz.eval_k, "temperature": 1.0, "greedy": True, "max_new_tokens": sz.max_new, "seed": self.seed,
            "batch_size": 256})

    def all(self, replay_steps: int | None = None) -> dict[str, tuple[list[dict], dict]]:
        """arm -> (stages, resources: labels, unlabeled prompts, Pipeline kwargs). ``replay_steps``:
        OPD steps of the replay control (g), matched to Stage 3's measured CPU time."""
        sz, n = self.sz, self.sz.labels
        tg = self.grpo("teacher_grpo", self.teacher, 0, n, sz.grpo_steps)
        rl = "@teacher_grpo"
        matched = sz.matched_steps
        s3 = self.grpo("student_grpo", "@student_opd", n, sz.held_out, sz.grpo_steps)
        replay_steps = replay_steps or sz.grpo_steps * sz.group  # default: as many completions as Stage 3
        replay = self.opd("student_replay", "@student_opd", rl, sz.rollouts, replay_steps)
        t_epochs = sz.grpo_steps * sz.prompts_per_step / n
        bridge_q = dict(fkl_rollouts=sz.rollouts, opd_rollouts=sz.opd_steps * sz.prompts_per_step)
        pool = sz.rollouts + sz.opd_prompts
        arms = {  # in the order they run: the key comparisons first
            "base": ([], 0, 0, {}),
            "a": ([self.grpo("direct_grpo", self.student, 0, n, sz.grpo_steps)], n, 0,
                  dict(student_labels=n, student_epochs=t_epochs)),
            "c": ([tg] + self.bridge(rl), n, pool, dict(teacher=True, teacher_labels=n, **bridge_q)),
            "b": (self.bridge(self.teacher), 0, pool, dict(teacher=True, **bridge_q)),
            "f": ([tg] + self.bridge(rl) + [s3], n + sz.held_out, pool,
                  dict(teacher=True, teacher_labels=n, student_labels=sz.held_out, student_epochs=t_epochs,
                       **bridge_q)),
            "g": ([tg] + self.bridge(rl) + [replay], n, pool,
                  dict(teacher=True, teacher_labels=n, replay_rollouts=replay_steps * sz.prompts_per_step,
                       **bridge_q)),
            "d": ([tg] + self.bridge(rl, opd=False), n, sz.rollouts,
                  dict(teacher=True, teacher_labels=n, fkl_rollouts=sz.rollouts)),
            "e": ([tg] + self.bridge(rl, fkl=False), n, sz.opd_prompts,
                  dict(teacher=True, teacher_labels=n, opd_rollouts=bridge_q["opd_rollouts"])),
            "a-matched": ([self.grpo("direct_grpo", self.student, 0, n, matched)], n, 0,
                          dict(student_labels=n, student_epochs=matched * sz.prompts_per_step / n)),
        }
        # references, not arms: the teacher before and after Stage 1 (condition C1, and that the
        # teacher is clearly better than the student); no outcome inputs, so calibrate skips them
        arms["teacher"] = ([], 0, 0, None)
        arms["teacher-rl"] = ([tg], n, 0, None)
        out = {}
        for arm, (stages, labels, prompts, q) in arms.items():
            last = "@" + stages[-1]["id"] if stages else self.teacher if arm == "teacher" else self.student
            if q is None:
                out[arm] = (stages + [self.evaluation(last)], {"labels": labels, "prompts": prompts, "pipeline": None})
                continue
            if q.get("teacher") and q.get("teacher_labels"):
                q = dict(q, teacher_epochs=t_epochs)
            out[arm] = (stages + [self.evaluation(last)], {"labels": labels, "prompts": prompts, "pipeline": q})
        return out


def stage(sid: str, kind: str, policy: str, teacher: str | None = None, data: dict | None = None,
          params: dict | None = None) -> dict:
    needs = sorted({v[1:] for v in (policy, teacher, *(data or {}).values()) if isinstance(v, str) and v.startswith("@")})
    out = {"id": sid, "kind": kind, "policy": policy, "needs": needs, "data": data or {}, "params": params or {},
           "resources": {"gpus": 1}}  # one "GPU" = one CPU stage at a time: gpu_hours = wall hours
    if teacher:
        out["teacher"] = teacher
    return out


# ---------------------------------------------------------------- the world and its models


def world_models(world: Path) -> tuple[ModelInfo, ModelInfo, SolveRates, SolveRates]:
    info = json.loads((world / "world.json").read_text())
    tok = json.loads((world / "tokenizer" / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"]) + len(tok.get("added_tokens", []))

    def model(name: str) -> tuple[ModelInfo, SolveRates]:
        m = info["models"][name]
        acc = next(v for k, v in m["base"].items() if k.startswith("avg@"))
        return (ModelInfo(name=str(world / name), params_b=m["params"] / 1e9, layers=m["layers"], hidden=m["hidden"],
                          heads=4, kv_heads=2, vocab=vocab, tokenizer="tinyworld-digits", context=256),
                SolveRates(max(acc, 0.005), source="tinyworld build (held-out avg@k)"))

    (s, rs), (t, rt) = model("student"), model("teacher")
    return s, t, rs, rt


def ensure_world(difficulty: int, quick: bool, world: str | None) -> Path:
    if world:
        path = Path(world)
    else:
        path = REPO / "tinyworld-cache" / f"d{difficulty}"
        if quick and not (path / "world.json").exists():
            path = REPO / "tinyworld-cache" / f"d{difficulty}-fast"
    if not (path / "world.json").exists():
        cmd = [sys.executable, "-m", "tinyworld.build", str(path), "--difficulty", str(difficulty)]
        cmd += ["--fast"] if path.name.endswith("-fast") else []
        print("building the world:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    return path.resolve()


def graph_of(arm: str, seed: int, stages: list[dict], res: dict, models, sz: Sizes) -> StageGraph:
    student, teacher, rs, rt = models
    if res["pipeline"] is None:  # a reference evaluation, not a student pipeline
        return StageGraph.model_validate({
            "plan": PLAN, "stages": stages,
            "meta": {"arm": arm, "seed": seed, "structure": f"reference {arm}", "labels": res["labels"],
                     "prompts": res["prompts"]}})
    q = dict(res["pipeline"])
    use_teacher = q.pop("teacher", False)
    pipe = Pipeline(teacher=teacher if use_teacher else None, teacher_rates=rt if use_teacher else None,
                    group_size=sz.group, pool=sz.rollouts + sz.opd_prompts, **q)
    return StageGraph.model_validate({
        "plan": PLAN, "predicted": {"eval": OBJECTIVE, "value": 0.0, "low": 0.0, "high": 1.0}, "stages": stages,
        "meta": {"arm": arm, "seed": seed, "structure": f"arm {arm}", "labels": res["labels"],
                 "prompts": res["prompts"], "outcome_inputs": outcome_inputs(student, rs, pipe)}})


def execute(graph: StageGraph, home: Path) -> str:
    from s2d_plan.run.executor import execute_graph
    from s2d_plan.run.progress import LiveDisplay, PlainDisplay

    t0 = time.time()
    # a live table with the ETA on a terminal; piped, one line per stage event
    title = f"tinyworld arm {graph.meta.get('arm')} seed {graph.meta.get('seed')}"
    display = LiveDisplay(title) if sys.stdout.isatty() else PlainDisplay(every_s=1e9)
    r = execute_graph(graph, home, display=display)
    print(f"  {graph.meta.get('arm')} seed {graph.meta.get('seed')}: {r.status} in {time.time() - t0:.0f}s "
          f"({', '.join(f'{k} {v}' for k, v in r.stages.items())})", flush=True)
    if r.exit_code:
        print("   " + "\n   ".join(r.failures), flush=True)
    return r.run_id


def matched_steps(home: Path, seed: int, sz: Sizes) -> int:
    """Direct GRPO steps that cost what the bridge (c) cost in this seed: c's measured CPU time
    over a direct GRPO step's measured time (arm a), both from the history."""
    from s2d_plan.history.read import query

    _, rows = query("""SELECT json_extract_string(r.graph, '$.meta.arm'), sum(done.h) FROM runs r JOIN stages s USING (run_id)
                       JOIN (SELECT cache_key, max(gpu_hours) AS h FROM stages WHERE status = 'FINISHED'
                             GROUP BY cache_key) done USING (cache_key)
                       WHERE r.plan = 'tinyworld-bench' AND r.status = 'FINISHED' AND s.kind <> 'eval'
                         AND CAST(json_extract(r.graph, '$.meta.seed') AS INT) = ?
                         AND json_extract_string(r.graph, '$.meta.arm') IN ('a', 'c') GROUP BY ALL""", home, [seed])
    hours = dict(rows)
    if not hours.get("a") or not hours.get("c"):
        return sz.matched_steps  # not measured: the probe's step count
    steps = round(hours["c"] / (hours["a"] / sz.grpo_steps))
    print(f"  a-matched, seed {seed}: {steps} GRPO steps = (c)'s {hours['c'] * 3600:.0f}s at "
          f"{hours['a'] * 3600 / sz.grpo_steps:.2f}s per direct GRPO step", flush=True)
    return max(steps, 2)


def replay_steps(home: Path, seed: int, sz: Sizes) -> int:
    """OPD steps that cost what Stage 3 cost in this seed: Stage 3's measured CPU time over
    the bridge OPD's measured time per step (both from the history)."""
    from s2d_plan.history.read import query

    _, rows = query("""SELECT s.stage_id, max(s.gpu_hours) FROM runs r JOIN stages s USING (run_id)
                       WHERE r.plan = 'tinyworld-bench' AND s.status = 'FINISHED' AND s.stage_id IN ('student_grpo', 'student_opd')
                         AND CAST(json_extract(r.graph, '$.meta.seed') AS INT) = ?
                         AND json_extract_string(r.graph, '$.meta.arm') IN ('c', 'f') GROUP BY ALL""", home, [seed])
    hours = dict(rows)
    if not hours.get("student_grpo") or not hours.get("student_opd"):
        return sz.grpo_steps * sz.group  # Stage 3 not measured (cached elsewhere): match sampled completions
    steps = round(hours["student_grpo"] / (hours["student_opd"] / sz.opd_steps))
    print(f"  replay control (g), seed {seed}: {steps} OPD steps = Stage 3's {hours['student_grpo'] * 3600:.0f}s "
          f"at {hours['student_opd'] * 3600 / sz.opd_steps:.2f}s per OPD step", flush=True)
    return max(steps, 2)


# ---------------------------------------------------------------- the allocator's arm (h)


def plan_for(world: Path, models, home: Path, sz: Sizes) -> Path:
    """plans/tinyworld.yaml pointed at this world, with this world's measured base accuracies."""
    import yaml

    student, teacher, rs, rt = models
    plan = yaml.safe_load((REPO / "plans" / "tinyworld.yaml").read_text())
    plan["student"].update(model=student.name, params_b=student.params_b, vocab=student.vocab,
                           accuracy={OBJECTIVE: round(rs.mean, 4)})
    plan["teachers"][0].update(model=teacher.name, params_b=teacher.params_b, vocab=teacher.vocab,
                               accuracy={OBJECTIVE: round(rt.mean, 4)})
    plan["data"]["labeled"].update(source=str(world / "data" / "labeled.jsonl"), size=sz.labels + sz.held_out)
    plan["data"]["prompts"].update(source=str(world / "data" / "prompts.jsonl"), size=sz.rollouts + sz.opd_prompts)
    plan["eval"][0].update(source=str(world / "data" / "eval.jsonl"), size=sz.eval_size)
    plan["pins"]["steps"] = {"teacher_grpo": sz.grpo_steps, "direct_grpo": sz.grpo_steps, "student_grpo": sz.grpo_steps,
                             "student_fkl": max(2, sz.rollouts // sz.fkl_batch), "student_opd": sz.opd_steps}
    path = home / "tinyworld-plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def recommended(plan: Path, home: Path, seed: int, arms: Arms, tag: str) -> StageGraph:
    """The allocator's graph for the plan, its seeds set to ``seed`` and its eval replaced by the
    benchmark's (the allocator decides the training; every arm is measured the same way)."""
    from s2d_plan.api import recommend

    rec = recommend(plan, home=home)  # with this history's calibration.json
    graph, summary = rec.graph, rec.summary
    print(f"  h ({tag}), seed {seed}: {summary}", flush=True)
    stages = []
    for st in graph.stages:
        d = json.loads(st.model_dump_json())
        if "seed" in d["params"]:
            d["params"]["seed"] = seed
        # the CPU scale's 40-token completions would cut the worked solutions short: lengths
        # are the world's (the only change to the allocator's training stages besides seeds)
        for key in ("max_new_tokens", "max_completion_length"):
            if key in d["params"]:
                d["params"][key] = arms.sz.max_new
        if d["kind"] == "fkl":
            d["params"]["max_length"] = 48 + arms.sz.max_new
        if d["kind"] == "eval":
            ev = arms.evaluation(d["policy"])
            d.update(data=ev["data"], params=ev["params"])
        d["resources"] = {"gpus": 1}
        stages.append(d)
    meta = dict(graph.meta, arm=f"h-{tag}", seed=seed, labels=graph.labels_spent(), prompts=sum(
        st.data.prompts.count for st in graph.stages if st.data.prompts is not None),
        structure=f"h-{tag}: {graph.meta['structure']}")
    meta.pop("trials", None)
    return StageGraph.model_validate({**json.loads(graph.model_dump_json()), "plan": PLAN, "stages": stages,
                                      "meta": meta})


# ---------------------------------------------------------------- results


RESULTS_SQL = """
WITH arm_runs AS (
    SELECT run_id, json_extract_string(graph, '$.meta.arm') AS arm,
           CAST(json_extract(graph, '$.meta.seed') AS INTEGER) AS seed,
           CAST(json_extract(graph, '$.meta.labels') AS INTEGER) AS labels,
           CAST(json_extract(graph, '$.meta.prompts') AS INTEGER) AS prompts
    FROM runs WHERE plan = 'tinyworld-bench' AND status = 'FINISHED'
    QUALIFY row_number() OVER (PARTITION BY arm, seed ORDER BY start_time DESC) = 1),
evals AS (   -- the final eval of each run (its metrics live under the cache key that computed them)
    SELECT s.run_id, max(m.value) FILTER (m.key LIKE 'eval/%/avg@%') AS sampled,
           max(m.value) FILTER (m.key LIKE 'eval/%/greedy') AS greedy
    FROM stages s JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
    WHERE s.stage_id = 'final_eval' GROUP BY s.run_id),
compute AS ( -- CPU-hours of every training stage a run used, wherever it was computed (cached or not)
    SELECT s.run_id, sum(done.hours) AS cpu_hours
    FROM stages s JOIN (SELECT cache_key, max(gpu_hours) AS hours FROM stages
                        WHERE status = 'FINISHED' GROUP BY cache_key) done USING (cache_key)
    WHERE s.kind <> 'eval' GROUP BY s.run_id)
SELECT arm, count(*) AS seeds,
       round(100 * avg(sampled), 1) AS sampled_avg, round(100 * coalesce(stddev_samp(sampled), 0), 1) AS sampled_std,
       round(100 * avg(greedy), 1) AS greedy_avg, round(100 * coalesce(stddev_samp(greedy), 0), 1) AS greedy_std,
       round(avg(coalesce(cpu_hours, 0)), 4) AS cpu_hours, max(labels) AS labels, max(prompts) AS prompts
FROM arm_runs JOIN evals USING (run_id) LEFT JOIN compute USING (run_id)
GROUP BY arm ORDER BY arm
"""


def results(home: Path) -> tuple[list[str], list[tuple]]:
    from s2d_plan.history.read import query

    return query(RESULTS_SQL, home)


def per_seed(home: Path) -> dict[str, dict[int, float]]:
    from s2d_plan.history.read import query

    _, rows = query("""SELECT json_extract_string(r.graph, '$.meta.arm'), CAST(json_extract(r.graph, '$.meta.seed') AS INT),
                              arg_max(m.value, r.start_time)
                       FROM runs r JOIN stages s USING (run_id)
                       JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
                       WHERE r.plan = 'tinyworld-bench' AND r.status = 'FINISHED' AND s.stage_id = 'final_eval'
                         AND m.key LIKE 'eval/%/avg@%' GROUP BY ALL""", home)
    out: dict[str, dict[int, float]] = {}
    for arm, seed, v in rows:
        out.setdefault(arm, {})[seed] = v
    return out


def table_text(cols: list[str], rows: list[tuple]) -> str:
    cells = [cols] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "no common seeds"
    d = [100 * (a[s] - b[s]) for s in seeds]
    mean = statistics.mean(d)
    sd = statistics.stdev(d) if len(d) > 1 else float("nan")
    wins = sum(x > 0 for x in d)
    return f"{mean:+.1f} points (per-seed diffs {', '.join(f'{x:+.1f}' for x in d)}; sd {sd:.1f}; {wins}/{len(d)} seeds positive)"


def plot(rows: list[tuple], cols: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ix = {c: i for i, c in enumerate(cols)}
    arms = [r[ix["arm"]] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = range(len(arms))
    ax.bar([x - 0.2 for x in xs], [r[ix["sampled_avg"]] for r in rows], 0.4,
           yerr=[r[ix["sampled_std"]] for r in rows], capsize=3, label="sampled avg@k (T=1)")
    ax.bar([x + 0.2 for x in xs], [r[ix["greedy_avg"]] for r in rows], 0.4,
           yerr=[r[ix["greedy_std"]] for r in rows], capsize=3, label="greedy", alpha=0.7)
    ax.set_xticks(list(xs), arms, rotation=30)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main


def run_seed(world: Path, sz: Sizes, seed: int, models, home: Path, wanted: list[str]) -> None:
    arms = Arms(world, sz, seed)
    for arm, (stages, res) in arms.all().items():
        if arm in wanted and arm not in ("g", "a-matched"):
            execute(graph_of(arm, seed, stages, res, models, sz), home)
    # matched in measured time (this seed's history), not in step counts
    if "a-matched" in wanted:
        stages, res = Arms(world, replace(sz, matched_steps=matched_steps(home, seed, sz)), seed).all()["a-matched"]
        execute(graph_of("a-matched", seed, stages, res, models, sz), home)
    if "g" in wanted:
        stages, res = arms.all(replay_steps(home, seed, sz))["g"]
        execute(graph_of("g", seed, stages, res, models, sz), home)


def run_allocator(world: Path, sz: Sizes, seed: int, models, home: Path) -> dict[str, Any]:
    """(h): the allocator's plan with the shipped constants, then after `calibrate`."""
    plan = plan_for(world, models, home, sz)
    cal = home / "calibration.json"
    if cal.exists():
        cal.rename(home / "calibration.previous.json")  # "before" means the shipped constants
    execute(recommended(plan, home, seed, Arms(world, sz, seed), "before"), home)
    report = calibrate(home)
    fit = report["fit"]
    print(f"calibrate: {fit['runs']} runs, RMSE {fit['rmse_before'] * 100:.1f} -> {fit['rmse_after'] * 100:.1f} "
          f"points; narrowed {', '.join(f'{n} {lo:.4g}-{hi:.4g}' for n, (lo, hi) in fit['ranges'].items()) or 'none'}")
    for r in report["table"]:
        print(f"    {r['structure']:<58} measured {r['measured']:6.1%}  before {r['before']:6.1%}  "
              f"after {r['after']:6.1%}")
    execute(recommended(plan, home, seed, Arms(world, sz, seed), "after"), home)
    return {k: fit[k] for k in ("runs", "rmse_before", "rmse_after", "fitted")}


def _comparisons(seeds_of: dict[str, Any], regret: dict[str, Any]) -> list[str]:
    """The paired comparisons of the arms, and the allocator's regret (also into ``regret``)."""
    comparisons = [("c", "a"), ("c", "a-matched"), ("c", "b"), ("f", "g"), ("c", "d"), ("c", "e"), ("f", "c")]
    lines = []
    for x, y in comparisons:
        if x in seeds_of and y in seeds_of:
            lines.append(f"- ({x}) - ({y}): {paired(seeds_of[x], seeds_of[y])}")
    for h in ("h-before", "h-after"):  # regret on the seeds the allocator's arm ran
        if h not in seeds_of:
            continue
        hs = sorted(seeds_of[h])
        arms_there = {arm: statistics.mean(100 * v[s] for s in hs) for arm, v in seeds_of.items()
                      if arm[0] in "abcdefg" and all(s in v for s in hs)}
        if arms_there:
            best = max(arms_there, key=arms_there.get)
            hv = statistics.mean(100 * seeds_of[h][s] for s in hs)
            regret[h] = {"seeds": hs, "best_arm": best, "best": round(arms_there[best], 1), "h": round(hv, 1),
                         "regret": round(arms_there[best] - hv, 1)}
            lines.append(f"- regret of {h} (seeds {hs}): best measured arm ({best}) {arms_there[best]:.1f} - "
                         f"{hv:.1f} = {arms_there[best] - hv:.1f} points")
    return lines


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small stages, one seed unless --seeds")
    ap.add_argument("--difficulty", type=int, default=1)
    ap.add_argument("--world", help="a built world (default tinyworld-cache/d<difficulty>)")
    ap.add_argument("--home", help="history home (default tinyworld-cache/runs-d<difficulty>[-quick])")
    ap.add_argument("--out", help="where the table and plot go (default benchmarks/results)")
    ap.add_argument("--arms", nargs="+", help="only these arms (default: all, then h before/after calibrate)")
    ap.add_argument("--report-only", action="store_true", help="run nothing: the table and plot from the history")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    sz = QUICK if a.quick else Sizes()
    seeds = a.seeds if not (a.quick and a.seeds == [0, 1, 2]) else [0]
    world = ensure_world(a.difficulty, a.quick, a.world)
    home = Path(a.home or REPO / "tinyworld-cache" / f"runs-d{a.difficulty}{'-quick' if a.quick else ''}").resolve()
    out = Path(a.out or REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    models = world_models(world)
    sz = replace(sz, max_new=json.loads((world / "world.json").read_text()).get("max_new_tokens", sz.max_new))
    tag = f"d{a.difficulty}{'-quick' if a.quick else ''}"
    print(f"tinyworld {tag}: world {world}, history {home}, seeds {seeds}")
    print(f"  base accuracy (build, held-out avg@k): student {models[2].mean:.1%}, teacher {models[3].mean:.1%}")
    if models[3].mean < models[2].mean + 0.1:
        print("  WARNING: the teacher is not clearly better than the student; teacher arms are not to be trusted")
    t0 = time.time()
    wanted = a.arms or ["base", "a", "a-matched", "b", "c", "d", "e", "f", "g", "h", "teacher", "teacher-rl"]
    regret: dict[str, Any] = {}
    if not a.report_only:
        for i, seed in enumerate(seeds):
            run_seed(world, sz, seed, models, home, wanted)
            if i == 0 and "h" in wanted:  # the allocator, before and after calibrating on this seed's arms
                regret["calibration"] = run_allocator(world, sz, seed, models, home)
        if len(seeds) > 1:
            fit = calibrate(home)["fit"]
            regret["calibration (all seeds)"] = {k: fit[k] for k in ("runs", "rmse_before", "rmse_after", "fitted")}
            print(f"calibrate on every run: {fit['runs']} runs, RMSE {fit['rmse_before'] * 100:.1f} -> "
                  f"{fit['rmse_after'] * 100:.1f} points")
    cols, rows = results(home)
    print("\nresults (SQL over the history):\n" + RESULTS_SQL.strip() + "\n")
    text = table_text(cols, rows)
    print(text)
    seeds_of = per_seed(home)
    lines = _comparisons(seeds_of, regret)
    print("\n" + "\n".join(lines))
    png = out / f"tinyworld-{tag}.png"
    plot(rows, cols, png, f"tinyworld {tag}: held-out accuracy, mean ± std over seeds {seeds}")
    md = out / f"tinyworld-{tag}.md"
    md.write_text(f"# tinyworld {tag}\n\nseeds {seeds}; {time.time() - t0:.0f}s; world {world.name}: "
                  f"student base {models[2].mean:.1%}, teacher base {models[3].mean:.1%}\n\n{text}\n\n"
                  + "\n".join(lines) + f"\n\n```sql\n{RESULTS_SQL.strip()}\n```\n")
    (out / f"tinyworld-{tag}.json").write_text(json.dumps({"columns": cols, "rows": rows, "per_seed": seeds_of,
                                                           "regret": regret}, indent=1, default=str))
    print(f"\nplot {png}; table {md}; {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
