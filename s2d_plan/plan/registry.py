"""Built-in registries of models and accelerators: data files, read once, looked up by name.

    >>> model_info("Qwen/Qwen3-8B").layers
    36
    >>> gpu_info("H100-80GB").memory_gb
    80.0

A plan may name a model the registry does not know (a local path, a new hub id) if it
gives the fields in ``REQUIRED_MODEL_FIELDS``; it may also override any field of a known
model. Names match case-insensitively, with or without the hub organisation
(``qwen3-8b`` finds ``Qwen/Qwen3-8B``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

# What an unknown model must state: its size, its architecture, its tokenizer.
REQUIRED_MODEL_FIELDS = ("params_b", "layers", "hidden", "heads", "kv_heads", "vocab", "tokenizer")
REQUIRED_GPU_FIELDS = ("memory_gb", "bf16_tflops", "bandwidth_tbs")


class Accuracy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = Field(ge=0, le=1)  # fraction correct (pass@1)
    source: str = "user"  # where the figure comes from


class ModelInfo(BaseModel):
    """Everything the planner knows about a model. No weights are ever read for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str  # registry name, hub id or local path as the plan gave it
    params_b: float = Field(gt=0)  # parameters, billions, embeddings included
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int | None = None  # defaults to hidden / heads
    intermediate: int | None = None
    vocab: int = Field(gt=0)
    tokenizer: str  # tokenizer family; distillation at token level needs one family + vocab
    tied_embeddings: bool = False
    context: int = 32768
    eos_token: str | None = None
    requires_remote_code: bool = False  # loading it needs trust_remote_code (custom code from its repo)
    accuracy: dict[str, Accuracy] = Field(default_factory=dict)  # published, by eval name
    known: bool = False  # True when the entry came from the built-in registry

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV-cache bytes one token occupies (keys and values, every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_dim_ * bytes_per_value

    def shares_tokenizer(self, other: ModelInfo) -> bool:
        return self.tokenizer == other.tokenizer and self.vocab == other.vocab


class GPUInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    memory_gb: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)  # dense peak
    bandwidth_tbs: float = Field(gt=0)  # memory bandwidth, TB/s
    source: str = "user"


def _load(filename: str) -> dict[str, dict[str, Any]]:
    text = resources.files("s2d_plan.plan").joinpath("data", filename).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@cache
def _models() -> dict[str, ModelInfo]:
    return {name: ModelInfo(name=name, known=True, **fields) for name, fields in _load("models.yaml").items()}


@cache
def _gpus() -> dict[str, GPUInfo]:
    return {name: GPUInfo(name=name, **fields) for name, fields in _load("gpus.yaml").items()}


def _normalize(name: str) -> str:
    return name.strip().lower().split("/")[-1]


def _lookup(table: dict[str, Any], name: str) -> Any | None:
    if name in table:
        return table[name]
    wanted = _normalize(name)
    for key, value in table.items():
        if _normalize(key) == wanted:
            return value
    return None


def model_info(name: str) -> ModelInfo | None:
    """The registry entry for ``name``, or None when the registry does not know it."""
    return _lookup(_models(), name)


def gpu_info(name: str) -> GPUInfo | None:
    return _lookup(_gpus(), name)


def known_models() -> list[str]:
    return list(_models())


def known_gpus() -> list[str]:
    return list(_gpus())


def resolve_model(name: str, overrides: dict[str, Any]) -> tuple[ModelInfo | None, list[str]]:
    """Registry entry for ``name`` with ``overrides`` applied.

    Returns (info, missing): ``missing`` lists the required fields an unknown model did
    not give (then info is None). The plan's spelling of the name is kept.
    """
    base = model_info(name)
    fields, missing = _merge(base, name, overrides, REQUIRED_MODEL_FIELDS)
    if missing:
        return None, missing
    fields["known"] = base is not None
    return ModelInfo.model_validate(fields), []


def resolve_gpu(name: str, overrides: dict[str, Any]) -> tuple[GPUInfo | None, list[str]]:
    """Like ``resolve_model`` for accelerators; a known type keeps its registry name."""
    base = gpu_info(name)
    fields, missing = _merge(base, base.name if base else name, overrides, REQUIRED_GPU_FIELDS)
    if missing:
        return None, missing
    return GPUInfo.model_validate(fields), []


def _merge(base: BaseModel | None, name: str, overrides: dict[str, Any],
           required: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    fields: dict[str, Any] = base.model_dump() if base else {}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields["name"] = name
    missing = [] if base else [f for f in required if f not in fields]
    return fields, missing
