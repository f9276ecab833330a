"""Published post-training results, one row per (paper, student, method, eval), read from
``evidence/data/published.yaml``. The outcome model fits its prior to these rows, so every
row is validated on load and a bad one is named by its id."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from importlib import resources

import yaml

from s2d_plan.errors import ConfigurationError

METHODS = ("base", "direct_rl", "distill_seq", "distill_opd", "distill_then_rl", "rl_then_distill")
KINDS = ("base", "instruct", "reasoning")


@dataclass(frozen=True)
class PublishedResult:
    id: str
    source: str
    citation: str
    where: str
    student: str
    student_params_b: float
    student_family: str
    student_kind: str
    method: str
    eval: str
    metric: str
    after: float
    notes: str
    teacher: str | None = None
    teacher_params_b: float | None = None
    teacher_family: str | None = None
    teacher_rl_trained: bool | None = None
    before: float | None = None
    teacher_accuracy: float | None = None
    labels: int | None = None
    rl_steps: int | None = None
    rl_batch: int | None = None
    group: int | None = None
    traces: int | None = None
    distill_steps: int | None = None
    completion_tokens: int | None = None
    compute_note: str | None = None
    heldout: bool = False


_STR = {"id", "source", "citation", "where", "student", "student_family", "student_kind",
        "method", "eval", "metric", "notes"}
_OPT_STR = {"teacher", "teacher_family", "compute_note"}
_FLOAT = {"student_params_b", "after"}
_OPT_FLOAT = {"teacher_params_b", "before", "teacher_accuracy"}
_OPT_INT = {"labels", "rl_steps", "rl_batch", "group", "traces", "distill_steps", "completion_tokens"}
_FRACTIONS = ("before", "after", "teacher_accuracy")
_NAMES = {f.name for f in fields(PublishedResult)}
_REQUIRED = _STR | _FLOAT


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problems(raw: dict) -> list[str]:
    problems = [f"unknown field {k!r}" for k in raw if k not in _NAMES]
    problems += [f"missing field {k!r}" for k in sorted(_REQUIRED) if raw.get(k) is None]
    for key, value in raw.items():
        if value is None:
            continue
        if key in _STR | _OPT_STR and not (isinstance(value, str) and value.strip()):
            problems.append(f"{key} must be a non-empty string")
        elif key in _FLOAT | _OPT_FLOAT and not _is_number(value):
            problems.append(f"{key} must be a number, not {value!r}")
        elif key in _OPT_INT and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            problems.append(f"{key} must be a positive integer, not {value!r}")
        elif key in {"teacher_rl_trained", "heldout"} and not isinstance(value, bool):
            problems.append(f"{key} must be true or false, not {value!r}")
    for key in _FRACTIONS:
        value = raw.get(key)
        if _is_number(value) and not 0.0 <= value <= 1.0:
            problems.append(f"{key} must be a fraction in [0, 1], not {value!r}")
    if raw.get("method") not in (None, *METHODS):
        problems.append(f"method must be one of {', '.join(METHODS)}, not {raw['method']!r}")
    if raw.get("student_kind") not in (None, *KINDS):
        problems.append(f"student_kind must be one of {', '.join(KINDS)}, not {raw['student_kind']!r}")
    size = raw.get("student_params_b")
    if _is_number(size) and size <= 0:
        problems.append("student_params_b must be positive")
    if raw.get("method") == "base" and raw.get("before") is not None:
        problems.append("a base row has no before (its score is after)")
    return problems


def parse_published(rows: object) -> list[PublishedResult]:
    """Validate raw YAML rows; raise ConfigurationError naming every bad row by its id."""
    if not isinstance(rows, list):
        raise ConfigurationError("published results: the file must hold a list of rows")
    results, errors, seen = [], [], set()
    for index, raw in enumerate(rows):
        if not isinstance(raw, dict):
            errors.append(f"row {index}: not a mapping")
            continue
        name = raw.get("id") or f"row {index}"
        problems = _problems(raw)
        if name in seen:
            problems.append("duplicate id")
        seen.add(name)
        if problems:
            errors.append(f"{name}: " + "; ".join(problems))
        else:
            results.append(PublishedResult(**raw))
    if errors:
        raise ConfigurationError("published results have bad rows:\n  " + "\n  ".join(errors))
    return results


@functools.cache
def _load() -> tuple[PublishedResult, ...]:
    text = resources.files("s2d_plan.evidence").joinpath("data/published.yaml").read_text(encoding="utf-8")
    return tuple(parse_published(yaml.safe_load(text)))


def load_published() -> list[PublishedResult]:
    """Every published row, validated once per process."""
    return list(_load())


def markdown_table(results: list[PublishedResult]) -> str:
    """The rows as a Markdown table (the docs page shows this)."""
    head = "| id | student | method | teacher | eval | before | after | where | held out |"
    lines = [head, "|" + "---|" * 9]
    for r in results:
        before = "" if r.before is None else f"{r.before:.3f}"
        lines.append(f"| {r.id} | {r.student} | {r.method} | {r.teacher or ''} | {r.eval} | {before} "
                     f"| {r.after:.3f} | {r.source}: {r.where} | {'yes' if r.heldout else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(load_published()))
