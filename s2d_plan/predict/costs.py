"""Cost and memory model: GPU-hours and peak memory per GPU of every stage kind.

Pure functions of model shape, token counts, GPU type and GPU count; no I/O.

Formulas (N = parameters, T = tokens, P = bf16 peak FLOP/s of one GPU, n = GPUs):

* Training is compute-bound: ``6·N·T`` FLOPs for forward + backward of the trained model
  (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1), plus
  ``2·N'·T`` for every extra forward pass (GRPO's frozen reference, the teacher in OPD and
  token-level forward KL). Wall time = FLOPs / (n · P · MFU).
* Generation (rollouts, GRPO/OPD sampling, eval, probe) is decode-bound: every decode step
  streams the weights and the live KV cache from HBM, so a step of a batch of B sequences
  costs ``max((2N + B·ctx·kv_bytes) / (BW·eff), 2N·B / (P·eff_c), step_floor)`` seconds;
  B is capped by the KV-cache memory left after the weights (vLLM's PagedAttention packs
  it; Kwon et al. 2023) and by vLLM's default ``max_num_seqs`` (256). Prefill is compute
  bound (2N FLOPs per prompt token). Generation is data-parallel over the stage's GPUs,
  tensor-parallel within the smallest group whose memory holds the weights.
* Memory: full-parameter AdamW in mixed precision keeps 16 bytes per parameter (bf16
  weights and grads 2+2, fp32 master weights, first and second moments 4+4+4; Rajbhandari
  et al. 2020, "ZeRO", sec. 3.1) before sharding. ZeRO-3/FSDP divides it by n. LoRA keeps
  frozen bf16 weights (2 bytes/param) plus AdamW state for ~1% trainable parameters (Hu
  et al. 2021). Activations assume gradient checkpointing: one bf16 hidden state per layer
  per token, one layer's working set, and fp32 logits (+ their gradient) for a micro-batch.
* vLLM: offline sampling (rollout, eval, probe) gives vLLM the usable memory of each GPU;
  on-policy training (GRPO, OPD; TRL's colocate mode) gives it what the trainer leaves:
  with sleep mode, vLLM frees its memory while the trainer steps, so it shares the GPU
  only with the trainer's resident state (weights, optimizer moments, frozen models);
  without it, with the trainer's whole peak. The cheaper option that fits is taken; its
  memory fraction, tensor-parallel size and sleep mode are part of the estimate, and the
  compiler writes them into the stage so the runner gives vLLM exactly that.
* Per-kind time factors (``CostConstants.kind_factors``, fitted by ``s2d-plan calibrate``)
  scale each stage kind's GPU-hours by measured / estimated time on the user's machines.
* Strategy: the first of ``single`` (DDP, whole state per GPU), ``fsdp`` (state sharded
  over the stage's GPUs), ``lora`` (frozen weights sharded when n > 1) whose peak fits in
  ``mem_headroom`` of the GPU; none fitting means the stage is infeasible (``fits=False``),
  never silently planned.

Efficiency constants live in ``CostConstants``: named, documented, and overridable from
``<home>/calibration.json`` (key ``"costs"``; ``s2d_plan.evidence.calibration_file``).

    >>> from s2d_plan.plan.registry import model_info, gpu_info
    >>> est = train_cost(model_info("Qwen/Qwen3-8B"), gpu_info("H100-80GB"), 8, tokens=1e8)
    >>> est.strategy, round(est.gpu_hours, 1)
    ('fsdp', 4.6)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from s2d_plan.plan.registry import GPUInfo, ModelInfo

GB = 1e9


@dataclass(frozen=True)
class CostConstants:
    # Model FLOPs utilisation of a training step (6N FLOPs/token / peak). Large-scale
    # pretraining reaches 40-55% (PaLM 46%, Chowdhery et al. 2022); RL post-training
    # frameworks with small micro-batches and checkpointing report ~25-35% (veRL,
    # OpenRLHF): 0.30.
    mfu_train: float = 0.30
    # Fraction of HBM bandwidth a decode step achieves in vLLM (~60-70% measured on A100/H100).
    gen_bandwidth_eff: float = 0.6
    # Fraction of bf16 peak reached by prefill and by very large decode batches.
    gen_compute_eff: float = 0.4
    # Fixed latency per decode step (scheduler, sampling, kernel launches): vLLM ~10 ms at
    # small models; also what an HF `generate` step costs on a CPU for tiny models.
    decode_step_s: float = 0.01
    gen_max_batch: int = 256  # vLLM's default max_num_seqs
    mean_len_frac: float = 0.6  # mean completion length / max_completion_length (math, non-thinking)
    bytes_full_ft: float = 16.0  # AdamW mixed precision, per parameter (ZeRO paper)
    lora_trainable_frac: float = 0.01  # LoRA rank ~32 on all linear layers of a 1-15B model
    micro_batch_seqs: int = 4  # sequences per micro-batch on one GPU
    mem_overhead_gb: float = 4.0  # CUDA context, NCCL buffers, allocator fragmentation
    mem_headroom: float = 0.92  # usable fraction of GPU memory
    stage_startup_s: float = 10.0  # process start, imports, engine warm-up, per stage
    load_gbs: float = 2.0  # weight loading speed from local disk, GB/s
    # vLLM sleep mode (TRL colocate, level 2): re-allocating the KV cache and re-pushing the
    # weights each step; assumed ~1 s (a few GB over NVLink/HBM plus allocator work).
    vllm_wake_s: float = 1.0
    # Calibrated measured / estimated time: per stage kind, and pooled for kinds without one.
    time_factor: float = 1.0
    kind_factors: tuple[tuple[str, float], ...] = ()

    def factor(self, kind: str) -> float:
        """The time factor of a stage kind (its own when calibrated, else the pooled one)."""
        return dict(self.kind_factors).get(kind, self.time_factor)


DEFAULT_CONSTANTS = CostConstants()


@dataclass(frozen=True)
class Estimate:
    """What one stage costs: GPU-hours over all its GPUs and the peak memory of one GPU."""

    gpu_hours: float
    peak_mem_gb: float
    strategy: str  # single | fsdp | lora | tp<k> (generation) | infeasible
    fits: bool = True
    need_gb: float = 0.0  # smallest per-GPU memory any strategy needs (for error messages)
    vllm_fraction: float | None = None  # share of each GPU's memory vLLM may take (generation)
    tp: int = 0  # vLLM tensor-parallel size (0: the stage does not generate)
    sleep: bool = False  # vLLM sleep mode between generations (colocated with a trainer)
    micro_batch: int = 0  # sequences per forward/backward on one GPU (0: the stage does not train)
    time_factor: float = 1.0  # calibrated factor already applied to gpu_hours

    def __add__(self, other: Estimate) -> Estimate:
        strategy = self.strategy if self.strategy == other.strategy else f"{self.strategy}+{other.strategy}"
        return Estimate(self.gpu_hours + other.gpu_hours, max(self.peak_mem_gb, other.peak_mem_gb),
                        strategy, self.fits and other.fits, max(self.need_gb, other.need_gb),
                        self.vllm_fraction if self.vllm_fraction is not None else other.vllm_fraction,
                        max(self.tp, other.tp), self.sleep or other.sleep, max(self.micro_batch, other.micro_batch))


def _n(m: ModelInfo) -> float:
    return m.params_b * 1e9


def _startup_s(models: list[ModelInfo], c: CostConstants) -> float:
    return c.stage_startup_s + sum(2 * _n(m) for m in models) / (c.load_gbs * GB)


# ---------------------------------------------------------------- generation


def generation(model: ModelInfo, gpu: GPUInfo, gpus: int, sequences: float, prompt_len: int,
               max_new: int, c: CostConstants = DEFAULT_CONSTANTS, per_step: float | None = None,
               resident_gb: float = 0.0) -> Estimate:
    """Sampling ``sequences`` completions: decode-bound, KV-cache-limited batches.

    Offline sampling (rollouts, eval) batches continuously, so it pays for the mean
    completion length. On-policy training (GRPO, OPD) samples ``per_step`` sequences per
    optimizer step and waits for the longest of each wave: it pays ``max_new`` decode
    steps per wave. ``resident_gb`` per GPU is taken by something else (a colocated
    trainer); vLLM gets the rest of the usable memory, as ``vllm_fraction`` of the GPU.

    >>> from s2d_plan.plan.registry import model_info, gpu_info
    >>> e = generation(model_info("Qwen/Qwen3-1.7B"), gpu_info("H100-80GB"), 1, 1000, 256, 1024)
    >>> e.fits, e.strategy, e.vllm_fraction
    (True, 'tp1', 0.87)
    """
    weights = 2 * _n(model)
    usable = gpu.memory_gb * GB * c.mem_headroom - c.mem_overhead_gb * GB - resident_gb * GB
    ctx = prompt_len + max_new
    kv_seq = model.kv_bytes_per_token() * ctx
    tp = 1  # a vLLM engine spans tp GPUs; engines split the stage's GPUs evenly (TRL requires it)
    while tp <= gpus and (gpus % tp or weights / tp + kv_seq / tp > usable):
        tp *= 2
    if tp > gpus:
        need = (weights + kv_seq) / GB / max(gpus, 1) + c.mem_overhead_gb + resident_gb
        return Estimate(0.0, need, "infeasible", False, need)
    replicas = max(gpus // tp, 1)
    kv_room = usable * tp - weights
    batch = max(1, min(c.gen_max_batch, int(kv_room / kv_seq)))
    per_replica = sequences / replicas
    batch = max(1, min(batch, math.ceil(per_replica)))
    mean_new = max(1.0, max_new * c.mean_len_frac)
    avg_ctx = prompt_len + mean_new / 2
    bw = gpu.bandwidth_tbs * 1e12 * tp * c.gen_bandwidth_eff
    flops = gpu.bf16_tflops * 1e12 * tp * c.gen_compute_eff
    step_s = max((weights + batch * avg_ctx * model.kv_bytes_per_token()) / bw,
                 2 * _n(model) * batch / flops, c.decode_step_s)
    if per_step:
        waves = math.ceil(per_step / replicas / batch)
        decode_steps = math.ceil(sequences / per_step) * waves * max_new
    else:
        decode_steps = per_replica * mean_new / batch
    prefill_s = 2 * _n(model) * per_replica * prompt_len / flops
    wall = decode_steps * step_s + prefill_s
    peak = (weights + batch * ctx * model.kv_bytes_per_token()) / tp / GB + c.mem_overhead_gb + resident_gb
    fraction = math.floor(usable / (gpu.memory_gb * GB) * 100) / 100  # vLLM preallocates all of it
    return Estimate(wall * gpus / 3600, peak, f"tp{tp}", True,
                    (weights + kv_seq) / tp / GB + c.mem_overhead_gb + resident_gb, fraction, tp)


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainPlan:
    """How a model trains on one GPU: the strategy, its peak, and what stays between steps."""

    strategy: str  # single | fsdp | lora | infeasible
    peak_gb: float
    need_gb: float  # smallest peak of any strategy (for error messages)
    resident_gb: float  # per GPU between steps, without overhead: weights, optimizer moments, frozen models
    micro_batch: int  # sequences per forward/backward on one GPU


def train_plan(model: ModelInfo, gpu: GPUInfo, gpus: int, seq_len: int, frozen: list[ModelInfo] = (),
               c: CostConstants = DEFAULT_CONSTANTS, allow_lora: bool = True) -> TrainPlan:
    """The leanest strategy and micro-batch whose peak fits; "infeasible" when none does."""
    n = _n(model)
    inter = model.intermediate or 4 * model.hidden
    frozen_bytes = sum(2 * _n(f) for f in frozen)
    overhead = c.mem_overhead_gb * GB
    limit = gpu.memory_gb * GB * c.mem_headroom
    grads = 2 * n  # bf16 gradients, freed between steps (zero_grad(set_to_none=True))
    options = [("single", c.bytes_full_ft * n + frozen_bytes, grads)]
    if gpus > 1:
        # FSDP gathers one layer's full weights at a time on top of the shards
        layer = 2 * n / model.layers
        options.append(("fsdp", (c.bytes_full_ft * n + frozen_bytes) / gpus + 2 * layer, grads / gpus + 2 * layer))
    if allow_lora:
        lora = (2 * n + frozen_bytes) / gpus + c.bytes_full_ft * c.lora_trainable_frac * n
        options.append(("lora", lora, 2 * c.lora_trainable_frac * n))
    need = math.inf
    # the configured micro-batch first; one sequence (more gradient accumulation) if nothing fits
    for micro in dict.fromkeys((c.micro_batch_seqs, 1)):
        tokens = micro * seq_len
        act = tokens * (2 * model.hidden * model.layers + 2 * (8 * model.hidden + 3 * inter)) \
            + tokens * model.vocab * 4 * 2  # fp32 logits and their gradient
        peaks = [(name, (state + act + overhead) / GB, (state - transient) / GB) for name, state, transient in options]
        need = min(need, min(p for _, p, _ in peaks))
        for name, peak, resident in peaks:
            if peak * GB <= limit:
                return TrainPlan(name, peak, need, resident, micro)
    return TrainPlan("infeasible", need, need, 0.0, 0)


def train_memory(model: ModelInfo, gpu: GPUInfo, gpus: int, seq_len: int, frozen: list[ModelInfo] = (),
                 c: CostConstants = DEFAULT_CONSTANTS, allow_lora: bool = True) -> tuple[str, float, float]:
    """(strategy, peak GB per GPU, smallest need) for training ``model`` with ``frozen``
    models (reference, teacher) resident in bf16; strategy "infeasible" when none fits."""
    plan = train_plan(model, gpu, gpus, seq_len, frozen, c, allow_lora)
    return plan.strategy, plan.peak_gb, plan.need_gb


def train_cost(model: ModelInfo, gpu: GPUInfo, gpus: int, tokens: float, extra_forward: list[ModelInfo] = (),
               seq_len: int = 1536, frozen: list[ModelInfo] = (), c: CostConstants = DEFAULT_CONSTANTS,
               allow_lora: bool = True) -> Estimate:
    """Training on ``tokens`` tokens: 6·N·T plus 2·N'·T per model in ``extra_forward``."""
    plan = train_plan(model, gpu, gpus, seq_len, frozen, c, allow_lora)
    return _train_time(plan, model, gpu, gpus, tokens, extra_forward, c)


def _train_time(plan: TrainPlan, model: ModelInfo, gpu: GPUInfo, gpus: int, tokens: float,
                extra_forward: list[ModelInfo], c: CostConstants) -> Estimate:
    if plan.strategy == "infeasible":
        return Estimate(0.0, plan.peak_gb, plan.strategy, False, plan.need_gb)
    mult = 6.0 if plan.strategy != "lora" else 4.0  # LoRA skips weight gradients (~2/3 of backward)
    flops = mult * _n(model) * tokens + sum(2 * _n(m) * tokens for m in extra_forward)
    wall = flops / (gpus * gpu.bf16_tflops * 1e12 * c.mfu_train)
    return Estimate(wall * gpus / 3600, plan.peak_gb, plan.strategy, True, plan.need_gb,
                    micro_batch=plan.micro_batch)


def on_policy(model: ModelInfo, gpu: GPUInfo, gpus: int, sequences: float, prompt_len: int, max_new: int,
              per_step: float, train: TrainPlan, c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    """Generation colocated with a trainer (TRL ``vllm_mode="colocate"``): the cheaper of
    vLLM beside the trainer's whole peak (awake) and vLLM beside its resident state only
    (sleep mode: vLLM frees its memory while the trainer steps, and pays a wake-up per step)."""
    if train.strategy == "infeasible":
        return Estimate(0.0, train.peak_gb, "infeasible", False, train.need_gb)
    awake = generation(model, gpu, gpus, sequences, prompt_len, max_new, c, per_step,
                       train.peak_gb - c.mem_overhead_gb)
    asleep = generation(model, gpu, gpus, sequences, prompt_len, max_new, c, per_step, train.resident_gb)
    if asleep.fits:
        wake_h = math.ceil(sequences / per_step) * c.vllm_wake_s * gpus / 3600
        asleep = replace(asleep, gpu_hours=asleep.gpu_hours + wake_h, sleep=True)
    options = [e for e in (awake, asleep) if e.fits]
    return min(options, key=lambda e: e.gpu_hours) if options else asleep


# ---------------------------------------------------------------- stage kinds


def _finish(est: Estimate, kind: str, models: list[ModelInfo], gpus: int, c: CostConstants) -> Estimate:
    """Add the stage's start-up (process, imports, weight loading), then its kind's time factor."""
    f = c.factor(kind)
    return replace(est, gpu_hours=(est.gpu_hours + _startup_s(models, c) * gpus / 3600) * f, time_factor=f)


def grpo_cost(model: ModelInfo, gpu: GPUInfo, gpus: int, prompts: float, group: int, prompt_len: int,
              max_new: int, prompts_per_step: int, beta: float = 0.0,
              c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    """GRPO over ``prompts`` prompt visits with ``group`` samples each: sampling (colocated
    vLLM), then training on every completion, plus the frozen reference's forward when beta > 0."""
    seqs = prompts * group
    ref = [model] if beta > 0 else []
    plan = train_plan(model, gpu, gpus, prompt_len + max_new, ref, c)
    gen = on_policy(model, gpu, gpus, seqs, prompt_len, max_new, prompts_per_step * group, plan, c)
    tokens = seqs * (prompt_len + max_new * c.mean_len_frac)
    return _finish(_train_time(plan, model, gpu, gpus, tokens, ref, c) + gen, "grpo", [model], gpus, c)


def _sampling(model: ModelInfo, gpu: GPUInfo, gpus: int, sequences: float, prompt_len: int, max_new: int,
              c: CostConstants) -> Estimate:
    return generation(model, gpu, gpus, sequences, prompt_len, max_new, c)


def rollout_cost(model: ModelInfo, gpu: GPUInfo, gpus: int, sequences: float, prompt_len: int, max_new: int,
                 c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    return _finish(_sampling(model, gpu, gpus, sequences, prompt_len, max_new, c), "rollout", [model], gpus, c)


def fkl_cost(student: ModelInfo, teacher: ModelInfo, gpu: GPUInfo, gpus: int, sequences: float, epochs: float,
             prompt_len: int, max_new: int, token_level: bool, c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    """Forward-KL warmup on teacher rollouts: student training, plus the teacher's forward
    for its logits when token-level (sequence-level is SFT on the teacher's text)."""
    tokens = sequences * epochs * (prompt_len + max_new * c.mean_len_frac)
    teacher_fw = [teacher] if token_level else []
    est = train_cost(student, gpu, gpus, tokens, teacher_fw, prompt_len + max_new, teacher_fw, c)
    return _finish(est, "fkl", [student] + teacher_fw, gpus, c)


def opd_cost(student: ModelInfo, teacher: ModelInfo, gpu: GPUInfo, gpus: int, sequences: float, prompt_len: int,
             max_new: int, per_step: int, c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    """On-policy distillation: the student samples ``per_step`` sequences per step (one per
    prompt) with colocated vLLM, priced like GRPO's generation; the teacher scores every
    token (a forward pass, resident in bf16); the student trains."""
    plan = train_plan(student, gpu, gpus, prompt_len + max_new, [teacher], c)
    gen = on_policy(student, gpu, gpus, sequences, prompt_len, max_new, per_step, plan, c)
    tokens = sequences * (prompt_len + max_new * c.mean_len_frac)
    train = _train_time(plan, student, gpu, gpus, tokens, [teacher], c)
    return _finish(train + gen, "opd", [student, teacher], gpus, c)


def eval_cost(model: ModelInfo, gpu: GPUInfo, gpus: int, problems: float, k: int, prompt_len: int, max_new: int,
              c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    return _finish(_sampling(model, gpu, gpus, problems * k, prompt_len, max_new, c), "eval", [model], gpus, c)


def probe_cost(models: list[ModelInfo], gpu: GPUInfo, gpus: int, prompts: float, samples: int, prompt_len: int,
               max_new: int, c: CostConstants = DEFAULT_CONSTANTS) -> Estimate:
    """Sampling each model on the same labeled prompts (one probe stage measures them all)."""
    total = Estimate(0.0, 0.0, "tp1")
    for m in models:
        total = total + _finish(_sampling(m, gpu, gpus, prompts * samples, prompt_len, max_new, c), "probe", [m],
                                gpus, c)
    return replace(total, time_factor=c.factor("probe"))
