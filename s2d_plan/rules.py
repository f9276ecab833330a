"""The allocation rules, checked on a compiled graph against its plan.

Only physics and the user are rules: GPU memory, GPU-hours, labels available (and not
spent twice unless the plan allows it), tokenizer compatibility for token-level
distillation, a teacher larger than the student, and labels never spent on GRPO when
there are none. Everything else, including whether GRPO on the cold student beats a
bridge from an available teacher, is the allocator's judgement from its posterior.

Every problem names its rule, so a test can feed a graph that breaks one rule and
check that exactly that rule is reported.

    >>> [r for r in RULES][:3]
    ['memory', 'budget', 'labels-available']
"""

from __future__ import annotations

from dataclasses import dataclass

from s2d_plan.contract import Stage, stage_ref
from s2d_plan.graph import StageGraph
from s2d_plan.plan.registry import ModelInfo
from s2d_plan.plan.spec import PlanSpec

RULES = ("memory", "budget", "labels-available", "labels-overlap", "labels-slice", "grpo-without-labels",
         "teacher-not-larger", "tokenizer-mismatch")


@dataclass(frozen=True)
class RuleProblem:
    rule: str  # one of RULES
    stage: str | None  # the stage that breaks it (None: the graph as a whole)
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] " + (f"{self.stage}: " if self.stage else "") + self.message


def rule_problems(spec: PlanSpec, graph: StageGraph) -> list[RuleProblem]:
    """Every rule ``graph`` breaks for ``spec`` (empty when sound)."""
    by_id = {st.id: st for st in graph.stages}
    models = {spec.resolve_path(m.model): m.info for m in [spec.student, *spec.teachers]}
    student = spec.student.info
    out: list[RuleProblem] = []
    for st in graph.stages:
        out += _stage_problems(spec, st, by_id, models, student)
    out += _label_problems(spec, graph)
    budget = spec.compute.gpu_hours
    if graph.estimated.gpu_hours > budget * (1 + 1e-9):
        out.append(RuleProblem("budget", None, f"estimated {graph.estimated.gpu_hours:.3f} GPU-hours exceed the "
                                               f"plan's {budget:g}"))
    return out


def _root(ref: str | None, by_id: dict[str, Stage]) -> str | None:
    """The model a ``@stage`` chain starts from (a checkpoint's base model)."""
    for _ in range(len(by_id) + 1):
        target = stage_ref(ref)
        if target is None or target not in by_id:
            return ref
        ref = by_id[target].policy
    return ref


def _stage_problems(spec: PlanSpec, st: Stage, by_id: dict[str, Stage], models: dict[str, ModelInfo],
                    student: ModelInfo) -> list[RuleProblem]:
    out = []
    gpu = spec.compute.gpu_info
    if st.estimated.peak_mem_gb_per_gpu > gpu.memory_gb:
        out.append(RuleProblem("memory", st.id, f"{st.estimated.peak_mem_gb_per_gpu:.1f} GB per GPU exceeds "
                                                f"the {gpu.name}'s {gpu.memory_gb:g} GB"))
    if st.kind in ("opd", "fkl") and st.teacher is not None:
        teacher = models.get(_root(st.teacher, by_id) or "")
        if teacher is None or teacher.params_b <= student.params_b:
            out.append(RuleProblem("teacher-not-larger", st.id, f"teacher {st.teacher} is not a model of the plan "
                                                                "larger than the student"))
        token = st.kind == "opd" or getattr(st.params, "mode", None) == "token"
        if teacher is not None and token and not teacher.shares_tokenizer(student):
            out.append(RuleProblem("tokenizer-mismatch", st.id, f"token-level distillation across tokenizers "
                                                                f"({teacher.tokenizer} vs {student.tokenizer})"))
    if st.kind == "grpo" and spec.data.labeled.size == 0:
        out.append(RuleProblem("grpo-without-labels", st.id, "GRPO, but the plan has no labeled data"))
    lab = st.data.labeled
    size = spec.data.labeled.size
    if lab is not None and lab.offset + (lab.count or 0) > size:
        out.append(RuleProblem("labels-slice", st.id, f"labeled slice {lab.offset}+{lab.count} lies outside the "
                                                      f"{size} labeled examples"))
    return out


def _label_problems(spec: PlanSpec, graph: StageGraph) -> list[RuleProblem]:
    out = []
    spent = graph.labels_spent()
    limit = spec.data.labeled.size * (2 if spec.data.reuse_labels else 1)
    if spent > limit:
        out.append(RuleProblem("labels-available", None, f"{spent} labels spent, {limit} available"))
    if not spec.data.reuse_labels:
        slices = sorted((st.data.labeled.offset, st.data.labeled.offset + st.data.labeled.count, st.id)
                        for st in graph.stages if st.labels_spent())
        for (_, a1, ida), (b0, _, idb) in zip(slices, slices[1:]):
            if b0 < a1:
                out.append(RuleProblem("labels-overlap", idb, f"spends labels that {ida} spends too, and the plan "
                                                              "does not set reuse_labels"))
    return out
