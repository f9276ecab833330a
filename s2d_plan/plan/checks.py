"""Cross-field checks of a plan, on the raw YAML document, tolerant of parts that are
malformed (the type checks report those). Each problem is (field path, message).

    >>> did_you_mean("H100", ["H100-80GB", "A100-80GB"])
    " (did you mean 'H100-80GB'?)"
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from s2d_plan.plan.registry import (
    REQUIRED_GPU_FIELDS,
    REQUIRED_MODEL_FIELDS,
    known_gpus,
    known_models,
    resolve_gpu,
    resolve_model,
)


def model_ref_shorthand(v: Any) -> Any:
    """``student: Qwen/Qwen3-1.7B`` means ``student: {model: Qwen/Qwen3-1.7B}``."""
    return {"model": v} if isinstance(v, str) else v


def did_you_mean(word: str, choices: Any) -> str:
    choices = [c for c in choices if isinstance(c, str)]
    prefixed = [c for c in choices if c.lower().startswith(word.lower())]  # "H100" -> "H100-80GB"
    close = prefixed[:1] or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def semantic_problems(raw: dict[str, Any]) -> list[tuple[tuple, str]]:
    """Cross-field checks on the raw document, tolerant of parts that are malformed
    (those are already reported by the type checks)."""
    out: list[tuple[tuple, str]] = []
    evals = raw.get("eval") if isinstance(raw.get("eval"), list) else []
    names = [e.get("name") for e in evals if isinstance(e, dict)]
    for i, name in enumerate(names):
        if name is not None and names.index(name) != i:
            out.append((("eval", i, "name"), f"eval set {name!r} is named twice"))
    objective = raw.get("objective")
    if isinstance(objective, dict) and isinstance(objective.get("eval"), str) and names:
        wanted = objective["eval"]
        if wanted not in names:
            out.append((("objective", "eval"), f"objective names eval set {wanted!r}, but eval has only "
                        f"{', '.join(map(str, names))}{did_you_mean(wanted, [n for n in names if isinstance(n, str)])}"))
    trusted = raw.get("trust_remote_code") if isinstance(raw.get("trust_remote_code"), list) else []
    models: list[tuple[tuple, dict[str, Any]]] = []
    student = model_ref_shorthand(raw.get("student"))
    if isinstance(student, dict):
        models.append((("student",), student))
    teachers = raw.get("teachers") if isinstance(raw.get("teachers"), list) else []
    for i, t in enumerate(teachers):
        t = model_ref_shorthand(t)
        if isinstance(t, dict):
            models.append((("teachers", i), t))
    seen: set[str] = set()
    for path, ref in models:
        name = ref.get("model")
        if not isinstance(name, str) or not name:
            continue
        if path[0] == "teachers":
            if name in seen:
                out.append((path + ("model",), f"teacher {name!r} is listed twice"))
            seen.add(name)
        out += _model_problems(path, name, ref, trusted)
    all_names = {ref.get("model") for _, ref in models}
    for i, name in enumerate(trusted):
        if name not in all_names:
            out.append((("trust_remote_code", i), f"{name!r} is not a model of this plan"))
    out += _gpu_problems(raw.get("compute"))
    out += _pin_problems(raw, {ref.get("model") for p, ref in models if p[0] == "teachers"})
    return out


def _model_problems(path: tuple, name: str, ref: dict[str, Any], trusted: list) -> list[tuple[tuple, str]]:
    overrides = {k: v for k, v in ref.items() if k in REQUIRED_MODEL_FIELDS + ("requires_remote_code",)}
    try:
        info, missing = resolve_model(name, overrides)
    except ValidationError:
        return []  # a wrong-typed override: reported by the type checks
    if missing:
        hint = did_you_mean(name, known_models())
        return [(path + ("model",), f"model {name!r} is not in the registry{hint}; give its "
                 f"{', '.join(missing)} (needed fields: {', '.join(REQUIRED_MODEL_FIELDS)})")]
    if info is not None and info.requires_remote_code and name not in trusted:
        return [(path + ("model",), f"model {name!r} needs trust_remote_code (it runs code from its "
                 f"repository); allow it by listing it under trust_remote_code: [{name}]")]
    return []


def _gpu_problems(compute: Any) -> list[tuple[tuple, str]]:
    if not isinstance(compute, dict) or not isinstance(compute.get("gpu"), str):
        return []
    name = compute["gpu"]
    overrides = {k: compute[k] for k in REQUIRED_GPU_FIELDS if k in compute}
    try:
        _, missing = resolve_gpu(name, overrides)
    except ValidationError:
        return []
    if missing:
        hint = did_you_mean(name, known_gpus())
        return [(("compute", "gpu"), f"GPU type {name!r} is not in the registry{hint}; known: "
                 f"{', '.join(known_gpus())}; or give {', '.join(missing)}")]
    return []


def _pin_problems(raw: dict[str, Any], teacher_names: set) -> list[tuple[tuple, str]]:
    pins = raw.get("pins")
    if not isinstance(pins, dict):
        return []
    out: list[tuple[tuple, str]] = []
    teacher = pins.get("teacher")
    if isinstance(teacher, str) and teacher != "none" and teacher not in teacher_names:
        out.append((("pins", "teacher"), f"pinned teacher {teacher!r} is not one of the plan's teachers"
                    f"{did_you_mean(teacher, [t for t in teacher_names if isinstance(t, str)])}"))
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    labeled = data.get("labeled") if isinstance(data.get("labeled"), dict) else {}
    size = labeled.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        if pins.get("stage3") is True and size == 0:
            out.append((("pins", "stage3"), "Stage 3 GRPO is pinned on, but the plan has no labeled data"))
        t_labels = pins.get("teacher_labels")
        if isinstance(t_labels, int) and not isinstance(t_labels, bool) and t_labels > size:
            out.append((("pins", "teacher_labels"), f"pins {t_labels} labels for the teacher, "
                        f"but data.labeled.size is {size}"))
    return out


