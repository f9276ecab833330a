"""The contract's bounds and its stage parameters: one typed model per stage kind.

Realistic upper bounds are checked when a graph is read (before anything runs), so a
typo or a hostile file fails with a message instead of deep inside a runner or the
history.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    def _in_process(self) -> _Samples:
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
