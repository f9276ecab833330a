"""The plan spec: what a user declares in YAML, as typed, frozen models.

Raw YAML dicts exist only inside ``load_plan``; after it, everything is a ``PlanSpec``.
Every problem in a file is reported at once, each with its field path and YAML line;
unknown keys get a did-you-mean suggestion. ``recommend`` and ``validate`` never download
anything or read weights: a hub id is taken as is, and a model the registry does not
know must state its shape and tokenizer.

    >>> spec = load_plan("plans/budget.yaml")          # doctest: +SKIP
    >>> spec.student.info.params_b, spec.compute.gpu_hours
    (1.72, 576.0)
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from s2d_plan.errors import PlanError
from s2d_plan.registry import (
    REQUIRED_GPU_FIELDS,
    REQUIRED_MODEL_FIELDS,
    GPUInfo,
    ModelInfo,
    known_gpus,
    known_models,
    resolve_gpu,
    resolve_model,
)
from s2d_plan.yamlio import YamlDoc, YamlProblem, read_yaml

# Stage ids the compiler uses; `pins.steps` keys must be one of these.
STAGE_IDS = ("probe", "teacher_grpo", "teacher_rollouts", "student_fkl", "student_opd",
             "student_grpo", "direct_grpo", "final_eval")
BRIDGES = ("fkl+opd", "opd", "fkl")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Spec):
    """A model: a registry name, hub id or local path, with optional field overrides."""

    model: str = Field(min_length=1)  # registry name, hub id, or local path
    revision: str | None = None  # hub revision to pin (used by runners, never by the planner)
    params_b: float | None = Field(default=None, gt=0)  # parameters, billions
    layers: int | None = Field(default=None, gt=0)
    hidden: int | None = Field(default=None, gt=0)
    heads: int | None = Field(default=None, gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    intermediate: int | None = Field(default=None, gt=0)
    vocab: int | None = Field(default=None, gt=0)
    tokenizer: str | None = None  # tokenizer family (e.g. qwen3, llama3)
    tied_embeddings: bool | None = None
    context: int | None = Field(default=None, gt=0)
    eos_token: str | None = None
    requires_remote_code: bool | None = None  # loading needs trust_remote_code
    accuracy: dict[str, float] | None = None  # known pass@1 per eval name, in [0, 1]

    @field_validator("accuracy")
    @classmethod
    def _fractions(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (v or {}).items():
            if not 0 <= value <= 1:
                raise ValueError(f"accuracy {name}={value} must be a fraction in [0, 1]")
        return v

    @property
    def info(self) -> ModelInfo:
        """Registry entry merged with this entry's overrides (validated at load)."""
        overrides = self.model_dump(exclude={"model", "revision", "accuracy"}, exclude_none=True)
        if self.accuracy:
            overrides["accuracy"] = {k: {"value": v, "source": "plan"} for k, v in self.accuracy.items()}
        info, missing = resolve_model(self.model, overrides)
        if info is None:  # load_plan rejects this; reaching here is a programming error
            raise PlanError("plan", [f"model {self.model!r} is missing {', '.join(missing)}"])
        return info


class LabeledData(_Spec):
    source: str = ""  # local JSONL/Parquet/CSV file, a `datasets` dir on disk, or a hub id
    size: int = Field(ge=0)  # how many labeled (verifiable) problems there are; 0 is valid
    problem_field: str = "problem"
    answer_field: str = "answer"
    split: str | None = None


class PromptPool(_Spec):
    source: str = ""
    size: int = Field(ge=0)  # unlabeled prompts for dense transfer
    prompt_field: str = "problem"
    split: str | None = None


class Data(_Spec):
    labeled: LabeledData
    prompts: PromptPool | None = None
    reuse_labels: bool = False  # may a label be spent twice (teacher and Stage 3)?
    # Tokens a model needs to write a full solution; sets every stage's generation length
    # (default: 1024 on GPUs, 40 for tiny CPU plans). Too short truncates answers to 0 reward.
    completion_tokens: int | None = Field(default=None, gt=0)


class Compute(_Spec):
    gpu: str  # accelerator type from the registry (see `known_gpus()`), or a custom one
    gpus: int = Field(gt=0)
    hours: float = Field(gt=0)  # wall-clock hours on all `gpus`
    memory_gb: float | None = Field(default=None, gt=0)  # overrides for a custom GPU type
    bf16_tflops: float | None = Field(default=None, gt=0)
    bandwidth_tbs: float | None = Field(default=None, gt=0)

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.hours

    @property
    def gpu_info(self) -> GPUInfo:
        info, missing = resolve_gpu(self.gpu, self.model_dump(include={"memory_gb", "bf16_tflops", "bandwidth_tbs"}))
        if info is None:
            raise PlanError("plan", [f"GPU {self.gpu!r} is missing {', '.join(missing)}"])
        return info


class EvalSet(_Spec):
    name: str = Field(min_length=1)
    source: str = ""
    problem_field: str = "problem"
    answer_field: str = "answer"
    size: int | None = Field(default=None, gt=0)
    split: str | None = None


class Objective(_Spec):
    eval: str  # name of the eval set whose accuracy the allocator maximizes


class Search(_Spec):
    trials: int = Field(default=200, gt=0)  # allocator trials across all structures
    seed: int = 0


class Pins(_Spec):
    """Choices the allocator must respect instead of searching."""

    teacher: str | None = None  # a teacher's model name, or "none" for no teacher
    bridge: Literal["fkl+opd", "opd", "fkl"] | None = None
    stage3: bool | None = None  # False forbids Stage 3 GRPO on the student; True forces it
    probe: bool | None = None  # True: measure solve rates first; False: never
    teacher_labels: int | None = Field(default=None, ge=0)  # labels spent in Stage 1
    group_size: int | None = Field(default=None, ge=2)  # GRPO samples per prompt (G)
    steps: dict[str, int] = Field(default_factory=dict)  # stage id -> fixed steps

    @field_validator("steps")
    @classmethod
    def _known_stages(cls, v: dict[str, int]) -> dict[str, int]:
        for stage, steps in v.items():
            if stage not in STAGE_IDS:
                hint = _did_you_mean(stage, STAGE_IDS)
                raise ValueError(f"unknown stage {stage!r}{hint} (stages: {', '.join(STAGE_IDS)})")
            if steps <= 0:
                raise ValueError(f"steps for {stage} must be positive, got {steps}")
        return v


def _model_ref(v: Any) -> Any:
    return {"model": v} if isinstance(v, str) else v


class PlanSpec(_Spec):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    objective: Objective
    student: ModelRef
    teachers: list[ModelRef] = Field(default_factory=list)
    data: Data
    compute: Compute
    eval: list[EvalSet] = Field(min_length=1)
    search: Search = Search()
    pins: Pins = Pins()
    trust_remote_code: list[str] = Field(default_factory=list)  # models allowed to run repo code
    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("student", mode="before")
    @classmethod
    def _student_shorthand(cls, v: Any) -> Any:
        return _model_ref(v)

    @field_validator("teachers", mode="before")
    @classmethod
    def _teachers_shorthand(cls, v: Any) -> Any:
        return [_model_ref(t) for t in v] if isinstance(v, list) else v

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def hash(self) -> str:
        """Content hash of the validated plan (not of its formatting)."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def resolve_path(self, source: str) -> str:
        """A source or model path as the runners should see it: a path that exists
        relative to the plan file becomes absolute; anything else (a hub id) is kept."""
        if not source:
            return source
        candidate = (self._base_dir / source).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
        return source

    def eval_set(self, name: str) -> EvalSet:
        return next(e for e in self.eval if e.name == name)


# ---------------------------------------------------------------- loading and errors


def load_plan(path: str | Path) -> PlanSpec:
    """Read, validate and return a plan; raise PlanError listing every problem."""
    path = Path(path)
    try:
        doc = read_yaml(path)
    except YamlProblem as exc:
        raise PlanError(str(path), exc.problems) from None
    return parse_plan(doc, source=str(path), base_dir=path.parent)


def parse_plan(doc: YamlDoc, source: str = "plan", base_dir: Path = Path(".")) -> PlanSpec:
    if not isinstance(doc.data, dict):
        kind = type(doc.data).__name__
        raise PlanError(source, [f"line {doc.line_of(()) or 1}: a plan is a mapping of keys "
                                 f"(name, objective, student, ...), not a {kind}"])
    found: list[tuple[int, str]] = []  # (line, message), reported in file order
    spec: PlanSpec | None = None
    try:
        spec = PlanSpec.model_validate(doc.data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            found.append((doc.line_of(loc) or 0, _describe(err, loc, doc)))
    for path, msg in _semantic_problems(doc.data):
        found.append((doc.line_of(path) or 0, f"{_where(path, doc)}: {msg}"))
    if found:
        ordered = sorted(found, key=lambda item: item[0])
        raise PlanError(source, _unique([msg for _, msg in ordered]))
    assert spec is not None
    spec._base_dir = base_dir.resolve()
    return spec


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _where(path: tuple, doc: YamlDoc) -> str:
    dotted = ".".join(str(p) for p in path) or "(top level)"
    line = doc.line_of(path)
    return f"{dotted} (line {line})" if line else dotted


def _clean_loc(loc: tuple) -> tuple:
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _describe(err: dict[str, Any], loc: tuple, doc: YamlDoc) -> str:
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        hint = _did_you_mean(key, _fields_at(loc[:-1]))
        return f"{_where(loc, doc)}: unknown key {key!r}{hint}"
    if kind == "missing":
        return f"{_where(loc, doc)}: required field is missing"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        got = type(err.get("input")).__name__
        return f"{_where(loc, doc)}: expected a mapping of keys, got a {got}"
    if kind == "list_type":
        return f"{_where(loc, doc)}: expected a list, got a {type(err.get('input')).__name__}"
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
    return f"{_where(loc, doc)}: {msg}{shown}"


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found by following ``loc`` from PlanSpec."""
    model: Any = PlanSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _inner_model(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, choices: Any) -> str:
    choices = [c for c in choices if isinstance(c, str)]
    prefixed = [c for c in choices if c.lower().startswith(word.lower())]  # "H100" -> "H100-80GB"
    close = prefixed[:1] or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _semantic_problems(raw: dict[str, Any]) -> list[tuple[tuple, str]]:
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
                        f"{', '.join(map(str, names))}{_did_you_mean(wanted, [n for n in names if isinstance(n, str)])}"))
    trusted = raw.get("trust_remote_code") if isinstance(raw.get("trust_remote_code"), list) else []
    models: list[tuple[tuple, dict[str, Any]]] = []
    student = _model_ref(raw.get("student"))
    if isinstance(student, dict):
        models.append((("student",), student))
    teachers = raw.get("teachers") if isinstance(raw.get("teachers"), list) else []
    for i, t in enumerate(teachers):
        t = _model_ref(t)
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
        hint = _did_you_mean(name, known_models())
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
        hint = _did_you_mean(name, known_gpus())
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
                    f"{_did_you_mean(teacher, [t for t in teacher_names if isinstance(t, str)])}"))
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


# ---------------------------------------------------------------- summary


def summarize_plan(spec: PlanSpec) -> str:
    """A one-screen, human summary of a valid plan (what `validate` prints)."""
    s = spec.student.info
    lines = [f"plan {spec.name} (hash {spec.hash()}): valid",
             f"  objective  maximize {spec.objective.eval}",
             f"  student    {_model_line(s, spec.objective.eval)}"]
    if not spec.teachers:
        lines.append("  teachers   none (GRPO on the student is the only route)")
    for i, t in enumerate(spec.teachers):
        info = t.info
        notes = []
        if info.params_b <= s.params_b:
            notes.append("not larger than the student: cannot teach")
        notes.append("same tokenizer: token-level distillation possible" if info.shares_tokenizer(s)
                     else f"different tokenizer ({info.tokenizer} vs {s.tokenizer}): sequence-level only")
        label = "teachers  " if i == 0 else "          "
        lines.append(f"  {label} {_model_line(info, spec.objective.eval)}; {'; '.join(notes)}")
    d = spec.data
    lines.append(f"  labeled    {d.labeled.size:,} problems from {d.labeled.source or '(no source)'}"
                 f" (fields {d.labeled.problem_field}/{d.labeled.answer_field})")
    if d.prompts:
        lines.append(f"  prompts    {d.prompts.size:,} unlabeled from {d.prompts.source or '(no source)'}")
    else:
        lines.append("  prompts    none (distillation reuses labeled prompts without their answers)")
    g = spec.compute.gpu_info
    lines.append(f"  compute    {spec.compute.gpus} x {g.name} ({g.memory_gb:g} GB) for {spec.compute.hours:g} h"
                 f" = {_hours(spec.compute.gpu_hours)} GPU-hours")
    lines.append("  eval       " + ", ".join(e.name for e in spec.eval))
    pins = spec.pins.model_dump(exclude_defaults=True)
    if pins:
        lines.append("  pins       " + ", ".join(f"{k}={v}" for k, v in pins.items()))
    lines.append(f"  search     {spec.search.trials} trials, seed {spec.search.seed}")
    return "\n".join(lines)


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.3g}"


def _model_line(info: ModelInfo, objective: str) -> str:
    acc = info.accuracy.get(objective)
    acc_text = f", {objective} {acc.value:.1%}" if acc else ""
    origin = "" if info.known else " (user-described)"
    return f"{info.name}{origin}: {info.params_b:g}B, {info.layers} layers, {info.tokenizer} tokenizer{acc_text}"
