"""The typed stage: ``@stage`` references, data slices, the kinds, and ``Stage`` itself
(its params parsed with the model of its kind)."""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field, SerializeAsAny, ValidationError, model_validator

from s2d_plan.contract.params import (
    MAX_GPU_HOURS,
    MAX_GPUS,
    MAX_ROWS,
    MAX_STAGE_ID,
    MAX_TEXT,
    EvalParams,
    FklParams,
    GrpoParams,
    Name,
    OpdParams,
    Params,
    ProbeParams,
    RolloutParams,
    StageId,
    _Frozen,
)
from s2d_plan.errors import ConfigurationError

PLUGINS_ENV = "S2D_STAGE_PLUGINS"
REF = "@"


# ---------------------------------------------------------------- references


def stage_ref(value: Any) -> str | None:
    """The stage id a ``@stage`` reference names, or None for a model name or path.

    >>> stage_ref("@teacher_grpo"), stage_ref("Qwen/Qwen3-8B")
    ('teacher_grpo', None)
    """
    return value[1:] if isinstance(value, str) and value.startswith(REF) else None


def short_name(model: str | None) -> str:
    """A model as people read it in a table: its last path part; a ``@stage`` as written.

    >>> short_name("Qwen/Qwen3-8B"), short_name("@teacher_grpo"), short_name("../models/student/")
    ('Qwen3-8B', '@teacher_grpo', 'student')
    """
    if not model:
        return ""
    return model if stage_ref(model) is not None else model.rstrip("/").split("/")[-1]


def _model_or_ref(value: str) -> str:
    if value == REF:
        raise ValueError("'@' must be followed by a stage id")
    return value


# a model (registry name, hub id, local path) or dataset path, or a @stage reference
ModelOrRef = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_model_or_ref)]


# ---------------------------------------------------------------- data slices


class LabeledSlice(_Frozen):
    """Which labeled (verifiable) examples a stage reads: rows [offset, offset + count)."""

    source: str = Field(max_length=MAX_TEXT)
    problem_field: Name = "problem"
    answer_field: Name = "answer"
    offset: int = Field(default=0, ge=0, le=MAX_ROWS)
    count: int | None = Field(default=None, ge=0, le=MAX_ROWS)  # None: to the end of the source
    split: Name | None = None
    format: Name | None = None  # jsonl | json | parquet | csv | arrow (default: by suffix)
    spend: bool = True  # False: read to measure (probe), not trained on; not a spent label


class PromptSlice(_Frozen):
    """Unlabeled prompts (answers, if any, never read)."""

    source: str = Field(max_length=MAX_TEXT)
    prompt_field: Name = "problem"
    offset: int = Field(default=0, ge=0, le=MAX_ROWS)
    count: int | None = Field(default=None, ge=0, le=MAX_ROWS)
    split: Name | None = None
    format: Name | None = None


class EvalSlice(_Frozen):
    name: str = Field(min_length=1, max_length=256)
    source: str = Field(max_length=MAX_TEXT)
    problem_field: Name = "problem"
    answer_field: Name = "answer"
    offset: int = Field(default=0, ge=0, le=MAX_ROWS)  # rows [offset, offset + size): a held-out slice
    size: int | None = Field(default=None, gt=0, le=MAX_ROWS)  # `size` rows from `offset` (None: to the end)
    split: Name | None = None
    format: Name | None = None


class StageData(_Frozen):
    labeled: LabeledSlice | None = None
    prompts: PromptSlice | None = None
    rollouts: ModelOrRef | None = None  # teacher rollouts: @stage (a rollout stage) or a JSONL path
    eval: tuple[EvalSlice, ...] | None = Field(default=None, max_length=256)

    def labels_spent(self) -> int:
        """Labeled examples this stage consumes (a probe's read-only slice: none)."""
        lab = self.labeled
        return (lab.count or 0) if lab is not None and lab.spend else 0


# ---------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    name: str
    params: type[Params]
    module: str  # `python -m <module> SPEC.json` runs one attempt
    model: bool = False  # produces a checkpoint (what `@stage` means as a policy/teacher)
    dataset: bool = False  # produces rows (what `@stage` means under data)
    resumable: bool = False  # keep the work dir across attempts (checkpoints live there)
    trains: bool = False  # several GPUs mean several processes (accelerate / torchrun)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("probe", ProbeParams, "runners.probe", dataset=True),
    Kind("grpo", GrpoParams, "runners.grpo", model=True, resumable=True, trains=True),
    Kind("rollout", RolloutParams, "runners.rollout", dataset=True),
    Kind("fkl", FklParams, "runners.fkl", model=True, resumable=True, trains=True),
    Kind("opd", OpdParams, "runners.opd", model=True, resumable=True, trains=True),
    Kind("eval", EvalParams, "runners.eval"),
)}
_plugins_loaded = False


def register_kind(kind: Kind) -> None:
    """Add a kind (a test fake); product kinds cannot be replaced. The same module may
    register twice (imported as a plugin and run as ``__main__``): the first stays."""
    known = KINDS.get(kind.name)
    if known is not None and known.module != kind.module:
        raise ValueError(f"stage kind {kind.name!r} is already defined by {known.module}")
    KINDS.setdefault(kind.name, kind)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            _plugins_loaded = False
            raise ConfigurationError(f"{PLUGINS_ENV}: cannot import plugin module {name!r} ({exc})") from None


def kind_of(name: str) -> Kind:
    """The kind called ``name``; ConfigurationError naming the known ones otherwise."""
    _load_plugins()
    if name not in KINDS:
        hint = difflib.get_close_matches(str(name), list(KINDS), n=1)
        raise ConfigurationError(f"unknown stage kind {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                 + f"; known: {', '.join(KINDS)}")
    return KINDS[name]


# ---------------------------------------------------------------- the stage


class Resources(_Frozen):
    gpus: int = Field(default=1, ge=0, le=MAX_GPUS)


class StageEstimate(_Frozen):
    gpu_hours: float = Field(default=0.0, ge=0, le=MAX_GPU_HOURS)
    peak_mem_gb_per_gpu: float = Field(default=0.0, ge=0, le=1e6)
    strategy: Name | None = None  # the cost model's choice: single, fsdp, lora, tp<k> ...
    time_factor: float = Field(default=1.0, gt=0, le=1e6)  # calibrated speed factor already in gpu_hours


class Stage(_Frozen):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_STAGE_ID)
    kind: str = Field(max_length=64)
    policy: ModelOrRef  # a model (registry name, hub id, local path) or @stage_id
    teacher: ModelOrRef | None = None  # distillation kinds
    needs: tuple[StageId, ...] = Field(default=(), max_length=10_000)
    data: StageData = StageData()
    params: SerializeAsAny[Params] = Params()
    resources: Resources = Resources()
    estimated: StageEstimate = StageEstimate()

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, raw: Any) -> Any:
        """Parse ``params`` with the model of the stage's kind (a tagged union keyed on
        ``kind``, dispatched through ``KINDS`` so that a test can register a fake)."""
        if not isinstance(raw, dict) or isinstance(raw.get("params"), Params):
            return raw
        kind = kind_of(raw.get("kind")) if isinstance(raw.get("kind"), str) and len(raw["kind"]) <= 64 else None
        if kind is None:
            raise ValueError("kind: a stage needs a kind (a name of at most 64 characters)")
        given = raw.get("params") if raw.get("params") is not None else {}
        if not isinstance(given, dict):
            raise ValueError(f"params: expected a mapping, got {type(given).__name__}")
        try:
            params = kind.params.model_validate(given)
        except ValidationError as exc:
            raise ValueError("; ".join(_param_problem(kind, e) for e in exc.errors())) from None
        return {**raw, "params": params}

    def references(self) -> Iterator[tuple[str, str]]:
        """(field, stage id) of every ``@stage`` reference this stage makes."""
        for name, value in (("policy", self.policy), ("teacher", self.teacher), ("data.rollouts", self.data.rollouts)):
            ref = stage_ref(value)
            if ref is not None:
                yield name, ref

    def labels_spent(self) -> int:
        return self.data.labels_spent()


def _param_problem(kind: Kind, err: dict[str, Any]) -> str:
    where = "params" + "".join(f".{p}" for p in err["loc"])
    if err["type"] == "extra_forbidden":
        name = str(err["loc"][-1])
        known = sorted(kind.params.model_fields)
        hint = difflib.get_close_matches(name, known, n=1)
        return (f"{where}: unknown {kind.name} parameter"
                + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; known: {', '.join(known)}")
    return f"{where}: {err['msg']}" + (f" (got {shown_value(err['input'])})" if "input" in err and
                                        isinstance(err["input"], (str, int, float, bool)) else "")


def shown_value(value: Any, limit: int = 60) -> str:
    """A value for an error message, cut short (a 10**400 or a 10,000-character id)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + f"… ({len(text)} characters)"
