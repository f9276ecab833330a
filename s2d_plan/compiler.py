"""Compiler: an Allocation becomes a StageGraph that runs without its plan.

Every stage carries what its runner needs: resolved model paths and data sources, the
exact slice of labeled data it spends (``data.labeled.offset/count``; disjoint between the
teacher and Stage 3 unless the plan allows reuse), prompt slices for rollouts and OPD
(labeled prompts without answers when the plan has no prompt pool), step counts and
hyper-parameters, GPUs, and the cost model's estimates.

    >>> from s2d_plan.allocate.allocator import allocate
    >>> from s2d_plan.plan.spec import load_plan
    >>> ctx = Context.from_spec(load_plan("plans/budget.yaml"))
    >>> graph = compile_graph(ctx, allocate(ctx))
    >>> [s.id for s in graph.stages]
    ['probe', 'teacher_grpo', 'teacher_rollouts', 'student_fkl', 'student_opd', 'student_grpo', 'final_eval']
"""

from __future__ import annotations

import math
from typing import Any

from s2d_plan.allocate.allocator import MIN_STEPS, Allocation, Context, SearchResult
from s2d_plan.contract import LabeledSlice, PromptSlice, Resources, Stage, StageEstimate, Tracking
from s2d_plan.errors import ConfigurationError
from s2d_plan.graph import Band, GraphEstimate, Sensitive, StageGraph
from s2d_plan.plan.spec import PlanSpec
from s2d_plan.predict import costs


def labeled_slice(spec: PlanSpec, offset: int, count: int, spend: bool = True) -> LabeledSlice:
    """Rows [offset, offset + count) of the plan's labeled pool; ``spend=False`` for a probe,
    which reads prompts to measure solve rates and trains on nothing."""
    lab = spec.data.labeled
    return LabeledSlice(source=spec.resolve_path(lab.source), problem_field=lab.problem_field,
                        answer_field=lab.answer_field, offset=offset, count=count, split=lab.split, spend=spend)


def _steps(amount: float, per_step: int) -> int:
    return max(MIN_STEPS, math.ceil(amount / per_step))


def _lr(ctx: Context, kind: str, lora: bool) -> float:
    """The learning rate a training stage runs at (its runner uses exactly this). LoRA
    takes ~10x the full fine-tuning rate (Schulman et al. 2025, "LoRA Without Regret")."""
    if ctx.scale.tiny:  # tiny models trained from scratch tolerate (and need) large steps
        return {"grpo": 1e-4, "fkl": 5e-4, "opd": 1e-4}[kind]
    full = {"grpo": 1e-6, "fkl": 1e-5, "opd": 1e-6}[kind]
    return full * 10 if lora else full


def vllm_settings(est: costs.Estimate, max_len: int) -> dict[str, Any]:
    """The vLLM settings the memory model assumed for a generating stage: colocated (the
    executor starts no vLLM server), its memory fraction, tensor-parallel size, sleep mode."""
    return {"mode": "colocate", "gpu_memory_utilization": est.vllm_fraction or 0.5,
            "tensor_parallel_size": max(est.tp, 1), "enable_sleep_mode": est.sleep, "max_model_len": max_len}


def _splits(n: int, gpus: int, unit: int = 1) -> int:
    """The smallest count >= n whose ``count * unit`` sequences split evenly over ``gpus``
    processes (runners refuse a step that does not)."""
    while (n * unit) % max(gpus, 1):
        n += 1
    return n


def _micro(est: costs.Estimate, share: int) -> int:
    """Per-device micro-batch: the memory model's, dividing this process's share of a step."""
    m = max(1, min(est.micro_batch or share, share))
    while share % m:
        m -= 1
    return m


class _Builder:
    def __init__(self, ctx: Context, alloc: Allocation):
        self.ctx, self.a, self.spec = ctx, alloc, ctx.spec
        self.stages: list[Stage] = []
        self.seed = self.spec.search.seed

    def add(self, sid: str, kind: str, policy: str, needs: list[str], data: dict[str, Any],
            params: dict[str, Any], teacher: str | None = None) -> str:
        est = self.a.costs[sid]
        refs = [r[1:] for r in (policy, teacher) if isinstance(r, str) and r.startswith("@")]
        refs += [v[1:] for v in data.values() if isinstance(v, str) and v.startswith("@")]
        self.stages.append(Stage(
            id=sid, kind=kind, policy=policy, teacher=teacher, needs=tuple(dict.fromkeys(needs + refs)),
            data=data, params=params, resources=Resources(gpus=self.ctx.gpus),
            estimated=StageEstimate(gpu_hours=round(est.gpu_hours, 4), peak_mem_gb_per_gpu=round(est.peak_mem_gb, 2),
                                    strategy=est.strategy, time_factor=round(est.time_factor, 6))))
        return sid

    def labeled(self, offset: int, count: int, spend: bool = True) -> LabeledSlice:
        return labeled_slice(self.spec, offset, count, spend)

    def prompts(self, count: int) -> PromptSlice:
        pool = self.spec.data.prompts
        if pool and pool.size:
            return PromptSlice(source=self.spec.resolve_path(pool.source), prompt_field=pool.prompt_field,
                               count=min(count, pool.size), split=pool.split)
        lab = self.spec.data.labeled  # no pool: labeled prompts, answers never read
        return PromptSlice(source=self.spec.resolve_path(lab.source), prompt_field=lab.problem_field,
                           count=min(count, lab.size), split=lab.split)

    def lora(self, sid: str) -> bool:
        return self.a.costs[sid].strategy.startswith("lora")

    def vllm(self, sid: str) -> dict[str, Any]:
        sc = self.ctx.scale
        return vllm_settings(self.a.costs[sid], sc.prompt_len + sc.max_new)

    def micro(self, sid: str, per_step: int) -> int:
        return _micro(self.a.costs[sid], max(1, per_step // self.ctx.gpus))


def compile_stages(ctx: Context, alloc: Allocation) -> list[Stage]:
    """The stages of one allocation, in execution order."""
    b = _Builder(ctx, alloc)
    s, q, sc = alloc.structure, alloc.quantities, ctx.scale
    student = ctx.spec.resolve_path(ctx.spec.student.model)
    first: list[str] = []
    if s.probe:
        n = min(sc.probe_prompts, ctx.labels)
        first = [b.add("probe", "probe", student, [], {"labeled": b.labeled(0, n, spend=False)},
                       {"samples_per_prompt": sc.probe_samples, "num_prompts": n, "temperature": 1.0,
                        "max_new_tokens": sc.max_new, "seed": b.seed, "vllm": b.vllm("probe")})]
    last, last_needs = student, list(first)
    if s.teacher:
        last, last_needs = _teacher_and_bridge(b, student, first)
    if s.stage3 or s.direct:
        sid = "student_grpo" if s.stage3 else "direct_grpo"
        offset = 0 if (ctx.reuse or not s.teacher_rl or s.direct) else q.teacher_labels
        last = "@" + b.add(sid, "grpo", last, last_needs, {"labeled": b.labeled(offset, q.student_labels)},
                           _grpo_params(b, sid, q.student_labels * q.student_epochs))
        last_needs = []
    evals = [{"name": e.name, "source": ctx.spec.resolve_path(e.source), "problem_field": e.problem_field,
              "answer_field": e.answer_field, "size": e.size or sc.eval_default_size,
              **({"split": e.split} if e.split else {})} for e in ctx.spec.eval]
    b.add("final_eval", "eval", last, last_needs, {"eval": evals},
          {"k": sc.eval_k, "temperature": 1.0 if sc.tiny else 0.6, "greedy": sc.tiny, "max_new_tokens": sc.max_new,
           "seed": b.seed, "vllm": b.vllm("final_eval")})
    return b.stages


def _grpo_params(b: _Builder, sid: str, visits: float) -> dict[str, Any]:
    sc, q = b.ctx.scale, b.a.quantities
    per_step = _splits(sc.prompts_per_step, b.ctx.gpus, q.group_size)
    steps = _steps(visits, per_step)
    return {"steps": steps, "num_generations": q.group_size, "prompts_per_step": per_step, "beta": 0.0,
            "loss_type": "dapo", "max_completion_length": sc.max_new, "temperature": 1.0, "seed": b.seed,
            "learning_rate": _lr(b.ctx, "grpo", b.lora(sid)), "lora": b.lora(sid), "save_steps": max(steps // 4, 1),
            "per_device_batch_size": b.micro(sid, per_step * q.group_size), "vllm": b.vllm(sid)}


def _teacher_and_bridge(b: _Builder, student: str, first: list[str]) -> tuple[str, list[str]]:
    """Stage 1 (when the teacher is RL-improved) and the bridge; returns the student
    checkpoint the bridge ends with and what a next stage must also need."""
    ctx, s, q, sc = b.ctx, b.a.structure, b.a.quantities, b.ctx.scale
    teacher = ctx.spec.resolve_path(s.teacher)
    if s.teacher_rl:
        teacher = "@" + b.add("teacher_grpo", "grpo", teacher, list(first),
                              {"labeled": b.labeled(0, q.teacher_labels)},
                              _grpo_params(b, "teacher_grpo", q.teacher_labels * q.teacher_epochs))
    last, last_needs = student, list(first)
    if "fkl" in s.bridge:
        per_prompt = max(1, math.ceil(q.fkl_rollouts / ctx.pool))
        n_prompts = max(1, math.ceil(q.fkl_rollouts / per_prompt))
        b.add("teacher_rollouts", "rollout", teacher, list(first), {"prompts": b.prompts(n_prompts)},
              {"samples_per_prompt": per_prompt, "temperature": 0.7, "max_new_tokens": sc.max_new, "seed": b.seed,
               "vllm": b.vllm("teacher_rollouts")})
        fkl_batch = _splits(sc.fkl_batch, ctx.gpus)
        last = "@" + b.add("student_fkl", "fkl", student, ["teacher_rollouts"], {"rollouts": "@teacher_rollouts"},
                           {"mode": "token" if s.fkl_token else "sequence", "epochs": 1,
                            "steps": _steps(n_prompts * per_prompt, fkl_batch),
                            "learning_rate": _lr(ctx, "fkl", b.lora("student_fkl")), "lora": b.lora("student_fkl"),
                            "max_length": sc.prompt_len + sc.max_new, "batch_size": fkl_batch,
                            "per_device_batch_size": b.micro("student_fkl", fkl_batch), "seed": b.seed},
                           teacher=teacher)
        last_needs = []
    if "opd" in s.bridge:
        batch = _splits(q.opd_batch or sc.prompts_per_step, ctx.gpus)
        steps = _steps(q.opd_rollouts, batch)
        last = "@" + b.add("student_opd", "opd", last, last_needs, {"prompts": b.prompts(steps * batch)},
                           {"steps": steps, "learning_rate": _lr(ctx, "opd", b.lora("student_opd")),
                            "lora": b.lora("student_opd"), "beta": 1.0, "max_completion_length": sc.max_new,
                            "temperature": 1.0, "prompts_per_step": batch,
                            "per_device_batch_size": b.micro("student_opd", batch), "seed": b.seed,
                            "vllm": b.vllm("student_opd")},
                           teacher=teacher)
        last_needs = []
    return last, last_needs


def compile_graph(ctx: Context, result: SearchResult, meta: dict[str, Any] | None = None) -> StageGraph:
    """The recommended allocation as a runnable, self-contained stage graph."""
    best = result.best
    stages = compile_stages(ctx, best)
    return StageGraph(
        plan=ctx.spec.name, plan_hash=ctx.spec.hash(), predicted=band(ctx.spec.objective.eval, result),
        estimated=GraphEstimate(gpu_hours=round(sum(st.estimated.gpu_hours for st in stages), 4)),
        stages=tuple(stages), meta=meta or {}, cluster=ctx.spec.compute.cluster,
        tracking=_tracking(ctx.spec))


def band(eval_name: str, result: SearchResult) -> Band:
    """The graph's ``predicted`` block from the recommended allocation's distribution."""
    p = result.best.prediction

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    sens = tuple(Sensitive(constant=row["constant"], assumed=row["assumed"], low=round(row["range"][0], 6),
                           high=round(row["range"][1], 6), flips_to=(row["flips"] or {}).get("to"))
                 for row in result.sensitivity)
    return Band(eval=eval_name, value=r(p.value), low=r(p.low), high=r(p.high), mean=r(p.mean), p_best=r(p.p_best),
                p_beats_direct=r(p.p_beats_direct), sensitive=sens)


def _tracking(spec: PlanSpec) -> Tracking | None:
    t = spec.tracking
    return Tracking(report_to=t.report_to, project=t.project or spec.name) if t.report_to else None


def compile_probe_graph(spec: PlanSpec) -> StageGraph:
    """`s2d-plan probe PLAN`: one probe stage per model of the plan (student, then each
    teacher) on the same labeled prompts; nothing is trained and no label is spent.
    Their evidence replaces the registry prior in the next ``recommend``.

    >>> from s2d_plan.plan.spec import load_plan
    >>> g = compile_probe_graph(load_plan("plans/budget.yaml"))
    >>> [s.id for s in g.stages]
    ['probe', 'probe.Qwen3-8B', 'probe.Qwen3-14B']
    """
    ctx = Context.from_spec(spec)
    sc = ctx.scale
    n = min(sc.probe_prompts, ctx.labels)
    if n == 0:
        raise ConfigurationError(f"{spec.name}: a probe samples labeled prompts, and the plan has none")
    labeled = labeled_slice(spec, 0, n, spend=False)
    stages = []
    for i, ref in enumerate([spec.student] + list(spec.teachers)):
        info = ref.info
        est = costs.probe_cost([info], ctx.gpu, ctx.gpus, n, sc.probe_samples, sc.prompt_len, sc.max_new, ctx.c)
        sid = "probe" if i == 0 else "probe." + "".join(ch if ch.isalnum() or ch in "-_." else "-"
                                                        for ch in ref.model.split("/")[-1])
        stages.append(Stage(id=sid, kind="probe", policy=spec.resolve_path(ref.model), data={"labeled": labeled},
                            params={"samples_per_prompt": sc.probe_samples, "num_prompts": n,
                                    "max_new_tokens": sc.max_new, "temperature": 1.0, "seed": spec.search.seed,
                                    "vllm": vllm_settings(est, sc.prompt_len + sc.max_new)},
                            resources=Resources(gpus=ctx.gpus),
                            estimated=StageEstimate(gpu_hours=round(est.gpu_hours, 4),
                                                    peak_mem_gb_per_gpu=round(est.peak_mem_gb, 2),
                                                    strategy=est.strategy, time_factor=round(est.time_factor, 6))))
    return StageGraph(plan=spec.name, plan_hash=spec.hash(), stages=tuple(stages), cluster=spec.compute.cluster,
                      estimated=GraphEstimate(gpu_hours=round(sum(s.estimated.gpu_hours for s in stages), 4)),
                      meta={"purpose": "probe: per-prompt solve rates of every model on the labeled data"})
