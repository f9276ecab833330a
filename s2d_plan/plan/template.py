"""A commented starting plan for a named student and teacher (``s2d-plan init``)."""

from __future__ import annotations

_TEMPLATE = """\
# A plan for s2d-plan: edit the values, then `s2d-plan validate {path}`.
# Every key is described in the plan reference of the manual.
name: {name}
# the eval set the allocator maximizes (one of the names under eval: below)
objective: {{eval: math500}}
# the model you will deploy; a registry name (s2d-plan knows its size and accuracy)
student: {{model: {student}}}
# candidate teachers: larger models GRPO can train or distill from
teachers:
  - {{model: {teacher}}}
data:
  # labeled problems with a checkable answer (jsonl, json, parquet, csv, a saved dataset or a hub id)
  labeled: {{source: EleutherAI/hendrycks_math, size: 7500, problem_field: problem, answer_field: solution}}
  # unlabeled prompts for rollouts and on-policy distillation
  prompts: {{source: data/prompts.jsonl, size: 40000, prompt_field: problem}}
# the accelerators and the wall-clock hours you can spend
compute: {{gpu: H100-80GB, gpus: 8, hours: 72}}
eval:
  - {{name: math500, source: HuggingFaceH4/MATH-500}}
"""


def plan_text(student: str, teacher: str, path: str = "plan.yaml") -> str:
    """The commented YAML of a plan for ``student`` and ``teacher`` that ``validate`` accepts."""
    name = "".join(c if c.isalnum() else "-" for c in student.split("/")[-1].lower()).strip("-") or "plan"
    return _TEMPLATE.format(name=f"{name}-plan", student=student, teacher=teacher, path=path)
