"""The plan spec: what a user declares in YAML, as typed, frozen models.

Raw YAML dicts exist only inside ``load_plan``; after it, everything is a ``PlanSpec``.
Every problem in a file is reported at once, each with its field path and YAML line;
unknown keys get a did-you-mean suggestion. ``recommend`` and ``validate`` never download
anything or read weights: a hub id is taken as is, and a model the registry does not
know must state its shape and tokenizer.

    >>> spec = load_plan("plans/budget.yaml")
    >>> spec.student.info.params_b, spec.compute.gpu_hours
    (1.72, 576.0)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from s2d_plan.cluster import ClusterSpec
from s2d_plan.contract import MAX_ROWS, MAX_SAMPLES, MAX_SEED, MAX_STEPS, MAX_TEXT, MAX_TOKENS, shown_value
from s2d_plan.errors import PlanError
from s2d_plan.plan.checks import did_you_mean, model_ref_shorthand, semantic_problems
from s2d_plan.plan.registry import GPUInfo, ModelInfo, resolve_gpu, resolve_model
from s2d_plan.plan.sources import source_problems
from s2d_plan.plan.yamlio import YamlDoc, YamlProblem, read_yaml

# Stage ids the compiler uses; `pins.steps` keys must be one of these.
STAGE_IDS = ("probe", "teacher_grpo", "teacher_rollouts", "student_fkl", "student_opd",
             "student_grpo", "direct_grpo", "final_eval")
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt")


# Upper bounds a plan must respect, checked by `validate` before anything is planned or
# run (the graph's own bounds live in s2d_plan.contract): a number beyond them is a typo
# or an attack, never a plan.
MAX_CLUSTER_GPUS = 1_000_000
MAX_HOURS = 100_000.0  # wall-clock hours (11 years)
MAX_LIST = 64  # teachers, eval sets, trusted models
MIN_PILOT_SHARE = 0.01  # below this a pilot round gets too few steps to show a learning curve


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelRef(_Spec):
    """A model: a registry name, hub id or local path, with optional field overrides."""

    model: str = Field(min_length=1, max_length=MAX_TEXT, description='Registry name, hub id, or local path of the model.')
    revision: str | None = Field(default=None, max_length=256, description='Hub revision to pin (used by the runners only).')
    params_b: float | None = Field(default=None, gt=0, le=100_000, description='Parameters, in billions (required for a model the registry does not know).')
    layers: int | None = Field(default=None, gt=0, le=10_000, description='Transformer layers (required for a model the registry does not know).')
    hidden: int | None = Field(default=None, gt=0, le=1 << 20, description='Hidden size (required for a model the registry does not know).')
    heads: int | None = Field(default=None, gt=0, le=1 << 16, description='Attention heads (required for a model the registry does not know).')
    kv_heads: int | None = Field(default=None, gt=0, le=1 << 16, description='Key/value heads (required for a model the registry does not know).')
    head_dim: int | None = Field(default=None, gt=0, le=1 << 16, description='Dimension of one attention head.')
    intermediate: int | None = Field(default=None, gt=0, le=1 << 22, description='MLP intermediate size.')
    vocab: int | None = Field(default=None, gt=0, le=1 << 24, description='Vocabulary size (required for a model the registry does not know).')
    tokenizer: str | None = Field(default=None, max_length=64, description='Tokenizer family (e.g. qwen3, llama3); token-level distillation needs the same family.')
    tied_embeddings: bool | None = Field(default=None, description='Whether input and output embeddings are tied.')
    context: int | None = Field(default=None, gt=0, le=1 << 26, description='Context length, in tokens.')
    eos_token: str | None = Field(default=None, max_length=256, description='The end-of-sequence token.')
    requires_remote_code: bool | None = Field(default=None, description='Loading needs trust_remote_code (then the model must be listed in trust_remote_code).')
    accuracy: dict[str, float] | None = Field(default=None, description='Known pass@1 per eval name, as a fraction in [0, 1].')

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
    source: str = Field(default="", max_length=MAX_TEXT, description='Local file, a `datasets` directory, or a hub id.')
    size: int = Field(ge=0, le=MAX_ROWS, description='How many labeled (verifiable) problems there are; 0 is valid (no GRPO is planned).')
    problem_field: str = Field(default="problem", description='The field that holds a problem.')
    answer_field: str = Field(default="answer", description='The field that holds its gold answer.')
    split: str | None = Field(default=None, description='The dataset split to read.')


class PromptPool(_Spec):
    source: str = Field(default="", max_length=MAX_TEXT, description='Local file, a `datasets` directory, or a hub id.')
    size: int = Field(ge=0, le=MAX_ROWS, description='Unlabeled prompts available for dense transfer (distillation).')
    prompt_field: str = Field(default="problem", description='The field that holds a prompt.')
    split: str | None = Field(default=None, description='The dataset split to read.')


class Data(_Spec):
    labeled: LabeledData = Field(description='The labeled problems, spent on GRPO (teacher and/or student).')
    prompts: PromptPool | None = Field(default=None, description='Unlabeled prompts for distillation (optional).')
    reuse_labels: bool = Field(default=False, description='May a label be spent twice (on the teacher and in Stage 3)?')
    # Tokens a model needs to write a full solution; sets every stage's generation length
    # (default: 1024 on GPUs, 40 for tiny CPU plans). Too short truncates answers to 0 reward.
    completion_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS, description="Tokens a model needs to write a full solution; sets every stage's generation length (default: 1024 on GPUs, 40 for tiny CPU plans). Too short truncates answers to 0 reward.")


class Compute(_Spec):
    gpu: str = Field(max_length=128, description='Accelerator type from the registry (see `known_gpus()`), or a custom one.')
    gpus: int = Field(gt=0, le=MAX_CLUSTER_GPUS, description='How many GPUs.')
    hours: float = Field(gt=0, le=MAX_HOURS, description='Wall-clock hours on all `gpus`.')
    memory_gb: float | None = Field(default=None, gt=0, le=100_000, description='Memory per GPU, GB (states a custom GPU type).')
    bf16_tflops: float | None = Field(default=None, gt=0, le=1_000_000, description='bf16 TFLOPS per GPU (states a custom GPU type).')
    bandwidth_tbs: float | None = Field(default=None, gt=0, le=1_000, description='Memory bandwidth per GPU, TB/s (states a custom GPU type).')
    cluster: ClusterSpec | None = Field(default=None, description="Where stages run (local, ray or slurm); not part of the plan's hash.")

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
    name: str = Field(min_length=1, max_length=256, description="The eval set's name (the objective refers to it).")
    source: str = Field(default="", max_length=MAX_TEXT, description='Local file, a `datasets` directory, or a hub id.')
    problem_field: str = Field(default="problem", description='The field that holds a problem.')
    answer_field: str = Field(default="answer", description='The field that holds its gold answer.')
    size: int | None = Field(default=None, gt=0, le=MAX_ROWS, description='How many problems to evaluate on.')
    split: str | None = Field(default=None, description='The dataset split to read.')


class Objective(_Spec):
    eval: str = Field(description='Name of the eval set whose accuracy the allocator maximizes.')


class Search(_Spec):
    trials: int = Field(default=200, gt=0, le=100_000, description='Allocator trials across all structures (accepted; the local search sizes itself).')
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the allocator's search.")


class Pins(_Spec):
    """Choices the allocator must respect instead of searching."""

    teacher: str | None = Field(default=None, description='A teacher\'s model name, or "none" for no teacher.')
    bridge: Literal["fkl+opd", "opd", "fkl"] | None = Field(default=None, description='The distillation bridge to the student: fkl+opd, opd or fkl.')
    stage3: bool | None = Field(default=None, description='False forbids Stage 3 GRPO on the student; True forces it.')
    probe: bool | None = Field(default=None, description='True: measure solve rates first; False: never.')
    teacher_labels: int | None = Field(default=None, ge=0, le=MAX_ROWS, description='Labels spent in Stage 1 (GRPO on the teacher).')
    group_size: int | None = Field(default=None, ge=2, le=MAX_SAMPLES, description='GRPO samples per prompt (G).')
    steps: dict[str, int] = Field(default_factory=dict, description='Stage id -> fixed steps.')

    @field_validator("steps")
    @classmethod
    def _known_stages(cls, v: dict[str, int]) -> dict[str, int]:
        for stage, steps in v.items():
            if stage not in STAGE_IDS:
                hint = did_you_mean(stage, STAGE_IDS)
                raise ValueError(f"unknown stage {stage!r}{hint} (stages: {', '.join(STAGE_IDS)})")
            if not 0 < steps <= MAX_STEPS:
                raise ValueError(f"steps for {stage} must be in [1, {MAX_STEPS}], got {shown_value(steps)}")
        return v


class Tracking(_Spec):
    """Trackers the training runners also log to, through TRL's ``report_to`` (the
    history stays the source of truth). Each must be installed where the plan is run."""

    report_to: list[Literal["trackio", "wandb", "mlflow", "tensorboard"]] = Field(default_factory=list, description="Trackers the training runners also log to (TRL's report_to); each must be installed.")
    project: str | None = Field(default=None, description="The tracker's project name (default: the plan's name).")

    @field_validator("report_to")
    @classmethod
    def _installed(cls, v: list[str]) -> list[str]:
        import importlib.util

        from s2d_plan.contract import TRACKERS

        missing = [t for t in v if importlib.util.find_spec(TRACKERS[t]) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} not installed in this Python ({sys.executable}); the runners "
                             f"would fail at their first logged step. Install it (pip install {' '.join(missing)}) "
                             "or remove it from tracking.report_to")
        return list(dict.fromkeys(v))


class Adaptive(_Spec):
    """``execute --adaptive``: short pilots of the candidates whose ranking is uncertain,
    then the rest of the budget on the winner. Pilot compute and labels count as spent."""

    pilot_share: float = Field(default=0.12, gt=0, description='Share of compute.hours the pilots may use (below 1).')
    holdout: int | None = Field(default=None, ge=1, le=MAX_ROWS, description='Labels kept out of training to score pilots (default: an eighth of the labels, 16 to 128).')
    max_candidates: int = Field(default=4, ge=1, le=16, description='The most candidates the session considers.')
    rounds: int = Field(default=2, ge=1, le=6, description="Successive-halving rounds (each doubles a survivor's pilot).")

    @field_validator("pilot_share")
    @classmethod
    def _share(cls, v: float) -> float:
        if v >= 1:
            raise ValueError(f"pilot_share {shown_value(v)} would spend the whole budget (or more) on pilots, "
                             "leaving nothing for the winner; give a share below 1 (0.10-0.15 is usual)")
        if v < MIN_PILOT_SHARE:
            raise ValueError(f"pilot_share {shown_value(v)} is too small for any pilot to learn anything; "
                             f"give at least {MIN_PILOT_SHARE:g} (0.10-0.15 is usual)")
        return v


class PlanSpec(_Spec):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The plan's name (letters, digits, `_`, `.`, `-`).")
    objective: Objective = Field(description='What the allocator maximizes.')
    student: ModelRef = Field(description='The model you will deploy.')
    teachers: list[ModelRef] = Field(default_factory=list, max_length=MAX_LIST, description='Candidate teachers; may be empty.')
    data: Data = Field(description='Labeled problems and unlabeled prompts.')
    compute: Compute = Field(description='GPUs and hours.')
    eval: list[EvalSet] = Field(min_length=1, max_length=MAX_LIST, description='Eval sets; the objective names one of them.')
    search: Search = Field(default=Search(), description="The allocator's search settings.")
    pins: Pins = Field(default=Pins(), description='Choices the allocator must respect instead of searching.')
    tracking: Tracking = Field(default=Tracking(), description='Trackers the runners also log to.')
    adaptive: Adaptive = Field(default=Adaptive(), description='Settings of `execute --adaptive`.')
    trust_remote_code: list[str] = Field(default_factory=list, max_length=MAX_LIST, description='Models allowed to run code from their repository.')
    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("student", mode="before")
    @classmethod
    def _student_shorthand(cls, v: Any) -> Any:
        return model_ref_shorthand(v)

    @field_validator("teachers", mode="before")
    @classmethod
    def _teachers_shorthand(cls, v: Any) -> Any:
        return [model_ref_shorthand(t) for t in v] if isinstance(v, list) else v

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def hash(self) -> str:
        """Content hash of the validated plan (not of its formatting, nor of where it runs
        which trackers it logs to, or how ``--adaptive`` pilots: none changes what is recommended)."""
        canon = json.dumps(self.model_dump(mode="json", exclude={"compute": {"cluster"}, "tracking": True,
                                                                 "adaptive": True}),
                           sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def resolve_path(self, source: str) -> str:
        """A source or model path as the runners see it: a path that exists relative to the
        plan file becomes absolute, and so does a relative path that does not exist yet
        but looks like one (``./x``, ``~/x``, ``x.jsonl``: data built later, such as the
        tiny models); anything else (a hub id such as ``org/name``) passes through."""
        if not source:
            return source
        candidate = (self._base_dir / source).expanduser()
        if candidate.exists() or (not Path(source).is_absolute() and (
                source.startswith(("./", "../", "~")) or source.endswith(_DATA_SUFFIXES))):
            return str(candidate.resolve())
        return source


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
    for path, msg in semantic_problems(doc.data) + source_problems(doc.data, base_dir):
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
        hint = did_you_mean(key, _fields_at(loc[:-1]))
        return f"{_where(loc, doc)}: unknown key {key!r}{hint}"
    if kind == "missing":
        return f"{_where(loc, doc)}: required field is missing"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        got = type(err.get("input")).__name__
        return f"{_where(loc, doc)}: expected a mapping of keys, got a {got}"
    if kind == "list_type":
        return f"{_where(loc, doc)}: expected a list, got a {type(err.get('input')).__name__}"
    value = err.get("input")
    shown = f" (got {shown_value(value)})" if isinstance(value, (str, int, float, bool)) else ""
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
