"""The contract between the planner and the runners: the one module both import.

The planner (``s2d_plan``) compiles stages; the executor writes one *stage spec* file
per attempt and starts ``python -m <kind module> SPEC.json``; a runner (``runners``)
reads that file back. Everything both sides must agree on lives here and nowhere else:

* the typed stage: ``Stage`` with a params model per kind (unknown or mistyped
  parameters are refused when a graph is read, not when a runner starts), one data
  slice type per pool, and the ``@stage`` reference syntax (``stage_ref``);
* the kinds themselves (``KINDS``): the module that runs each, what it produces
  (a checkpoint, a dataset), whether its work directory survives a failed attempt;
* the spec file (``StageSpec``), the output file names and the ``COMPLETE`` marker
  (``finalize``, ``is_complete``).

Kinds are a closed set. A test suite may add a fake kind with ``register_kind`` from a
module named in ``S2D_STAGE_PLUGINS`` (comma-separated), so that an executor started
in another process knows it too; the product ships none.

    >>> s = Stage.model_validate({"id": "a", "kind": "grpo", "policy": "@b", "needs": ["b"],
    ...                           "params": {"steps": 3}})
    >>> s.params.steps, s.params.num_generations, stage_ref(s.policy)
    (3, 8, 'b')
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError,
                      model_validator)

from s2d_plan.errors import ConfigurationError, IncompatibleModelsError, S2DError

__all__ = ["COMPLETE_MARKER", "EVIDENCE_FILE", "KINDS", "MODEL_SUBDIR", "ROLLOUTS_FILE", "ConfigurationError",
           "IncompatibleModelsError", "Kind", "S2DError", "Stage", "StageSpec", "TRACKERS", "Tracking", "VllmSettings",
           "finalize", "is_complete", "kind_of", "load_spec", "register_kind", "stage_ref"]

COMPLETE_MARKER = "COMPLETE"  # written last, after the output directory is in place
MODEL_SUBDIR = "model"  # a training stage's checkpoint (Hugging Face format)
ROLLOUTS_FILE = "rollouts.jsonl"  # a rollout stage's dataset
EVIDENCE_FILE = "evidence.jsonl"  # a probe stage's per-prompt solve counts
PLUGINS_ENV = "S2D_STAGE_PLUGINS"
REF = "@"
MAX_STAGE_ID = 64
# Realistic upper bounds, checked when a graph is read (before anything runs), so that a
# typo or a hostile file fails with a message instead of deep inside a runner or the
# history (whose INTEGER columns hold 2**31 - 1).
MAX_STEPS = 10_000_000
MAX_ROWS = 10_000_000_000  # examples in a data source
MAX_TOKENS = 1 << 20  # generation or sequence length
MAX_SAMPLES = 4096  # samples per prompt, group size, k
MAX_BATCH = 1 << 16
MAX_SEED = 2**32 - 1  # what numpy and torch accept
MAX_GPUS = 4096
MAX_GPU_HOURS = 1e9
MAX_TEXT = 4096  # a model name, path or source


class _Frozen(BaseModel):
    # NaN/inf are refused in every float field (a JSON 1e400 reads as inf)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Name = Annotated[str, Field(max_length=256)]  # a field name, split, format
StageId = Annotated[str, Field(min_length=1, max_length=MAX_STAGE_ID)]


# ---------------------------------------------------------------- references


def stage_ref(value: Any) -> str | None:
    """The stage id a ``@stage`` reference names, or None for a model name or path.

    >>> stage_ref("@teacher_grpo"), stage_ref("Qwen/Qwen3-8B")
    ('teacher_grpo', None)
    """
    return value[1:] if isinstance(value, str) and value.startswith(REF) else None


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
    size: int | None = Field(default=None, gt=0, le=MAX_ROWS)  # the first `size` rows
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


# ---------------------------------------------------------------- params, one model per kind


class Params(_Frozen):
    """Base of every kind's parameters."""

    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class VllmSettings(_Frozen):
    """How a stage runs vLLM, as the memory model assumed it (the compiler fills it from
    the stage's estimate). Runners pass it to TRL (``GRPOConfig``/``DistillationConfig``
    ``vllm_*`` fields) or to ``vllm.LLM``; where vLLM is not used (CPU, not installed) it
    is recorded and ignored. A hand-written stage without it gets these defaults, never
    TRL's ``vllm_gpu_memory_utilization=0.3``."""

    mode: Literal["colocate", "server"] = "colocate"  # server: a `trl vllm-serve` the user started
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)  # fraction of each GPU's memory for vLLM
    tensor_parallel_size: int = Field(default=1, ge=1, le=4096)  # GPUs per vLLM engine (divides the stage's GPUs)
    enable_sleep_mode: bool = False  # offload vLLM's weights and KV cache while the trainer steps
    max_model_len: int | None = Field(default=None, ge=16, le=MAX_TOKENS)  # prompt + completion tokens (None: the model's)
    server_base_url: str | None = Field(default=None, max_length=MAX_TEXT)  # mode server only, e.g. http://host:8000


class _Generates(Params):
    """Kinds that generate; sampling kinds run vLLM in their own process (no server)."""

    vllm: VllmSettings = VllmSettings()


class _Samples(_Generates):
    @model_validator(mode="after")
    def _in_process(self) -> "_Samples":
        if self.vllm.mode != "colocate":
            raise ValueError("vllm.mode: sampling stages run vLLM in their own process; only colocate is possible")
        return self


class ProbeParams(_Samples):
    samples_per_prompt: int = Field(default=8, ge=1, le=MAX_SAMPLES)
    num_prompts: int = Field(default=64, ge=1, le=MAX_ROWS)
    max_new_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0, le=100)
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH)


class RolloutParams(_Samples):
    samples_per_prompt: int = Field(default=4, ge=1, le=MAX_SAMPLES)
    max_new_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0, le=100)
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH)


class EvalParams(_Samples):
    k: int = Field(default=4, ge=1, le=MAX_SAMPLES)  # samples per problem (avg@k, pass@k)
    max_new_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=0.6, ge=0, le=100)
    greedy: bool = True  # also score one greedy completion per problem
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH)


class _TrainParams(Params):
    steps: int | None = Field(default=100, ge=1, le=MAX_STEPS)
    learning_rate: float = Field(default=1e-6, gt=0, le=1)
    save_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)  # checkpoint every N steps (default: steps // 4)


class GrpoParams(_TrainParams, _Generates):
    num_generations: int = Field(default=8, ge=2, le=MAX_SAMPLES)  # G, samples per prompt
    prompts_per_step: int = Field(default=16, ge=1, le=MAX_BATCH)
    beta: float = Field(default=0.0, ge=0, le=1000)  # KL to the reference (0: no reference model)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    max_completion_length: int = Field(default=512, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, gt=0, le=100)
    lora: bool = False  # LoRA adapters, merged into the saved checkpoint
    per_device_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH)  # micro-batch in completions


class FklParams(_TrainParams):
    mode: Literal["sequence", "token"] = "sequence"  # SFT on teacher text, or token-level forward KL
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)  # None: `epochs` over the rollouts
    epochs: float = Field(default=1, gt=0, le=10_000)
    learning_rate: float = Field(default=1e-5, gt=0, le=1)
    max_length: int = Field(default=1024, ge=8, le=MAX_TOKENS)
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH)  # sequences per optimizer step, over all processes
    lora: bool = False  # LoRA adapters, merged into the saved checkpoint
    per_device_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH)  # micro-batch (default: the whole share)


class OpdParams(_TrainParams, _Generates):
    beta: float = Field(default=1.0, ge=0, le=1)  # 1: reverse KL(student || teacher) per token
    max_completion_length: int = Field(default=512, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, gt=0, le=100)
    prompts_per_step: int = Field(default=16, ge=1, le=MAX_BATCH)  # = sequences per step (one completion per prompt)
    lora: bool = False  # LoRA adapters, merged into the saved checkpoint
    per_device_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH)  # micro-batch (default: the whole share)


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
        importlib.import_module(name)


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


# ---------------------------------------------------------------- the spec file and outputs


# What a plan's `tracking.report_to` may name, and the package each needs (TRL's
# `report_to` takes these names; the history stays the source of truth).
TRACKERS = {"trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


class Tracking(_Frozen):
    """Experiment trackers the training runners also log to (pass-through to TRL)."""

    report_to: tuple[Literal["trackio", "wandb", "mlflow", "tensorboard"], ...] = ()
    project: str | None = None  # the tracker's project (trackio, wandb); the compiler sets the plan's name


class StageSpec(_Frozen):
    """What the executor hands one attempt of a runner (``SPEC.json``).

    ``inputs`` holds every reference resolved: a model name or path passes through,
    ``@stage`` becomes that stage's output directory. The runner works in ``work_dir``
    (the same path on every attempt, so a resumable runner continues there) and calls
    ``finalize``; metrics are JSON lines appended to ``metrics_path``."""

    run_id: str = Field(max_length=128)
    attempt: int = Field(ge=1, le=2**31 - 1)
    stage: Stage
    inputs: dict[str, str] = Field(default_factory=dict)
    output_dir: Path
    work_dir: Path
    metrics_path: Path
    device: Literal["auto", "cuda", "cpu"] = "auto"
    cache_key: str = ""
    # trackers, not params: a stage logged to W&B is the same stage (its cache key ignores this)
    tracking: Tracking | None = None

    @property
    def tracker_run_name(self) -> str:
        """The name a tracker shows for this attempt: run id and stage id."""
        return f"{self.run_id}/{self.stage_id}"

    @property
    def params(self) -> Any:
        return self.stage.params

    @property
    def data(self) -> StageData:
        return self.stage.data

    @property
    def stage_id(self) -> str:
        return self.stage.id


def load_spec(path: str | Path) -> StageSpec:
    """The spec file of one attempt; ConfigurationError listing every problem."""
    try:
        return StageSpec.model_validate(json.loads(Path(path).read_text()))
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in validation_problems(exc)]
        raise ConfigurationError(f"stage spec {path}:\n  " + "\n  ".join(lines)) from None


def validation_problems(exc: ValidationError) -> list[tuple[tuple, str]]:
    """(location, message) of every error, without pydantic's boilerplate."""
    return [(tuple(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def write_spec(spec: StageSpec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(indent=1, exclude_none=True))


def finalize(spec: StageSpec, summary: dict[str, Any] | None = None) -> Path:
    """Move the finished work directory into place, then mark it complete."""
    work, out = spec.work_dir, spec.output_dir
    if out.exists():
        if is_complete(out):
            raise RuntimeError(f"{out} is already complete; refusing to overwrite it")
        shutil.rmtree(out)  # renamed into place right before a crash, never marked
    os.replace(work, out)
    marker = {"stage": spec.stage_id, "run_id": spec.run_id, "attempt": spec.attempt,
              "time": time.time(), "summary": summary or {}}
    tmp = out / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, out / COMPLETE_MARKER)
    return out


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).exists()
