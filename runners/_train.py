"""Helpers the TRL-based runners share: params, device, metrics forwarding, checkpoints,
the verifier reward and the teacher/student compatibility check.

Kept deliberately small; each runner module reads top to bottom on its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from runners.common import MetricWriter
from s2d_plan.contract import MODEL_SUBDIR, ConfigurationError, IncompatibleModelsError, StageSpec

CHECKPOINTS = "checkpoints"
ZERO_REWARD_PATIENCE = int(os.environ.get("S2D_ZERO_REWARD_STEPS", "10"))  # "many steps" of all-zero reward
_STOP_AFTER = "S2D_TEST_CRASH_AFTER_STEP"  # tests: die right after saving this step's checkpoint


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def device_of(spec: StageSpec) -> str:
    """``auto`` means cuda where available, else cpu; bf16 on CUDA, fp32 on CPU."""
    import torch

    dev = spec.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("stage asks for device cuda, but torch sees no CUDA device")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars fill the stderr tail the executor keeps
    if dev == "cpu":
        # Several engineers / stages share the cores; more threads than this only thrash.
        torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // max(1, world_size()))))
    return dev


def trainer_args(spec: StageSpec, p: dict[str, Any], device: str) -> dict[str, Any]:
    """TrainingArguments every TRL runner sets the same way."""
    steps = p.steps
    return dict(
        output_dir=str(spec.work_dir / CHECKPOINTS),
        max_steps=int(steps) if steps else -1,  # -1: run the epochs instead
        learning_rate=float(p.learning_rate),
        logging_steps=1,
        save_strategy="steps",
        save_steps=int(p.save_steps or (max(1, int(steps) // 5) if steps else 200)),
        save_total_limit=2,
        **tracker_args(spec),
        seed=int(p.seed),
        data_seed=int(p.seed),
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        fp16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": "bfloat16" if device == "cuda" else "float32"},
    )


def use_vllm(device: str) -> bool:
    """vLLM generation where it is installed and a GPU is present (S2D_USE_VLLM=0 turns it off)."""
    if os.environ.get("S2D_USE_VLLM") == "0":
        return False
    return device == "cuda" and importlib.util.find_spec("vllm") is not None


def vllm_args(p: Any, device: str) -> dict[str, Any]:
    """The stage's vLLM settings as TRL config fields (GRPOConfig and DistillationConfig
    share these names in TRL 1.16). Always set, so TRL's own defaults (memory fraction
    0.3, no sleep) never apply; without vLLM (CPU) TRL ignores them."""
    v = p.vllm
    args = dict(use_vllm=use_vllm(device), vllm_mode=v.mode, vllm_gpu_memory_utilization=float(v.gpu_memory_utilization),
                vllm_tensor_parallel_size=int(v.tensor_parallel_size), vllm_enable_sleep_mode=bool(v.enable_sleep_mode),
                vllm_max_model_length=v.max_model_len)
    if v.server_base_url:
        args["vllm_server_base_url"] = v.server_base_url
    return args


def batch_layout(kind: str, per_step: int, per_device: int | None, world: int) -> tuple[int, int]:
    """(per-device micro-batch, gradient accumulation) for one optimizer step of
    ``per_step`` sequences over ``world`` processes."""
    if per_step % world:
        raise ConfigurationError(f"{kind}: {per_step} sequences per step do not split over {world} processes")
    share = per_step // world
    micro = int(per_device or share)
    if share % micro:
        raise ConfigurationError(f"{kind}: per_device_batch_size {micro} does not divide {share} (one process's "
                                 f"share of a step)")
    return micro, share // micro


def lora_config(enabled: bool, kind: str):
    """The LoRA adapters every training runner uses when ``lora: true`` (rank 16 on all
    linear layers); ``save_final`` merges them, so the saved model is a plain checkpoint."""
    if not enabled:
        return None
    if importlib.util.find_spec("peft") is None:
        raise ConfigurationError(f"{kind}: lora: true needs the peft package (pip install peft)")
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")


def tracker_args(spec: StageSpec) -> dict[str, Any]:
    """TRL's ``report_to`` from the plan's ``tracking``, named by run and stage."""
    t = spec.tracking
    if t is None or not t.report_to:
        return {"report_to": "none"}
    return {"report_to": list(t.report_to), "run_name": spec.tracker_run_name,
            **({"project": t.project} if t.project else {})}


def latest_checkpoint(spec: StageSpec) -> str | None:
    """The newest checkpoint in the work directory that was written completely."""
    root = spec.work_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    done = []
    for d in root.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[-1])
        except ValueError:
            continue
        # The HF Trainer writes trainer_state.json after the model, optimizer and RNG states:
        # without it the save was cut short. (FSDP checkpoints keep weights in sub-folders.)
        try:
            json.loads((d / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        done.append((step, d))
    return str(max(done)[1]) if done else None


def metrics_callback(writer: MetricWriter, prefix: str = ""):
    """A TrainerCallback that forwards TRL's per-step logs to the stage's metric stream."""
    from transformers import TrainerCallback

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            values = {f"{prefix}{k}": v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if "frac_reward_zero_std" in logs:  # groups with one outcome give GRPO no signal
                values[f"{prefix}signal_yield_groups"] = 1.0 - float(logs["frac_reward_zero_std"])
            writer.log_many(state.global_step, values)

        def on_save(self, args, state, control, **kwargs):
            stop = os.environ.get(_STOP_AFTER)
            if stop and state.global_step >= int(stop):
                print(f"test hook: crashing after checkpoint {state.global_step}", file=sys.stderr)
                os._exit(17)

    return _Forward()


def train_and_save(trainer, spec: StageSpec) -> dict:
    """Train (resuming from the newest whole checkpoint, if any), save the final model, and
    return the summary every training runner reports."""
    resume = latest_checkpoint(spec)
    if resume:
        print(f"{spec.stage.kind}: resuming from {resume}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume)
    params = list(trainer.accelerator.unwrap_model(trainer.model).parameters())
    trained = sum(p.numel() for p in params if p.requires_grad)  # LoRA: the adapters only
    save_final(trainer, spec)
    return {"steps": int(trainer.state.global_step), "train_loss": float(result.training_loss),
            "resumed_from": resume, "processes": world_size(), "trained_params": trained,
            "params": sum(p.numel() for p in params)}


def save_final(trainer, spec: StageSpec) -> Path:
    """Save the trained model and tokenizer to ``work_dir/model``; drop the checkpoints."""
    import shutil

    out = spec.work_dir / MODEL_SUBDIR
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        # a LoRA adapter: merge it so later stages (and vLLM) load model/ like any checkpoint
        # (single process only: merging FSDP-sharded weights would need a full state dict)
        if trainer.accelerator.is_main_process:
            model.merge_and_unload().save_pretrained(str(out))
    else:
        trainer.save_model(str(out))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(out))
        shutil.rmtree(spec.work_dir / CHECKPOINTS, ignore_errors=True)  # optimizer states: big, no longer needed
    trainer.accelerator.wait_for_everyone()
    return out


# ----------------------------------------------------------------------------- rewards


class ZeroRewardWatchdog:
    """Warns (stderr + metric) when the verifier scores every completion 0 for many batches
    while the completions are not empty: the classic silent reward bug."""

    def __init__(self, writer: MetricWriter | None, patience: int = ZERO_REWARD_PATIENCE):
        self.writer, self.patience, self.run, self.warned = writer, patience, 0, False

    def update(self, step: int, verdicts, texts: list[str]) -> bool:
        nonempty = any(t.strip() for t in texts)
        if nonempty and verdicts and all(v.score == 0 for v in verdicts):
            self.run += 1
        else:
            self.run = 0
        if self.run >= self.patience:
            if not self.warned:
                from collections import Counter

                why = Counter(v.status for v in verdicts).most_common()
                print(f"WARNING: the verifier scored every completion 0 for {self.run} batches while completions "
                      f"are non-empty (statuses in the last batch: {why}). Check the answer format with "
                      f"`s2d-plan reward-check`.", file=sys.stderr, flush=True)
                self.warned = True
            if self.writer is not None:
                self.writer.log(step, "verifier/zero_reward_alarm", 1.0)
            return True
        return False


def completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: the assistant message(s)
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def observed_signal_yield(group_keys: list, scores: list[float]) -> float:
    """Share of this batch's prompt groups whose samples disagree (some right, some wrong):
    the observed counterpart of the probe's per-prompt estimate (runners/probe.py) and of
    the planner's expectation under a Beta of solve rates (s2d_plan/predict/outcome.py)."""
    groups: dict[Any, set] = {}
    for k, s in zip(group_keys, scores):
        groups.setdefault(k, set()).add(s > 0.5)
    return sum(len(v) > 1 for v in groups.values()) / max(1, len(groups))


def verifier_reward(verifier, writer: MetricWriter | None):
    """A TRL reward function: the verifier's score, with per-batch verifier metrics."""
    from runners.verifier import batch_metrics

    watchdog = ZeroRewardWatchdog(writer)

    def accuracy_reward(prompts, completions, answer, index=None, log_metric=None, trainer_state=None, **kwargs):
        texts = [completion_text(c) for c in completions]
        verdicts = verifier.score_many(list(answer), texts)
        scores = [v.score for v in verdicts]
        if log_metric is not None:
            for k, v in batch_metrics(verdicts).items():
                log_metric(k, v)
            log_metric("signal_yield", observed_signal_yield(list(index) if index is not None else list(answer), scores))
        step = trainer_state.global_step + 1 if trainer_state is not None else 0
        watchdog.update(step, verdicts, texts)
        return scores

    return accuracy_reward


# ----------------------------------------------------------------------------- compatibility


def _tokenizer_files(path: str) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    cfg_file = Path(path) / "config.json"
    if cfg_file.is_file():  # read the JSON itself: no model class, no weights
        cfg = json.loads(cfg_file.read_text())
    else:
        cfg = AutoConfig.from_pretrained(path).to_dict()
    vocab_size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    return {"tokenizer": tok, "vocab_size": vocab_size}


def check_distillable(student: str, teacher: str) -> None:
    """Token-level distillation compares next-token distributions: the teacher and student must
    share one tokenizer (vocabulary, chat template, end-of-turn token) and one vocab_size.
    Reads tokenizers and configs only; raises IncompatibleModelsError before any weights load."""
    s, t = _tokenizer_files(student), _tokenizer_files(teacher)
    st, tt = s["tokenizer"], t["tokenizer"]
    problems = []
    if s["vocab_size"] != t["vocab_size"]:
        problems.append(f"model vocab_size differs (student {s['vocab_size']}, teacher {t['vocab_size']})")
    if len(st) != len(tt) or st.get_vocab() != tt.get_vocab():
        problems.append(f"tokenizer vocabularies differ (student {len(st)} tokens, teacher {len(tt)})")
    if st.eos_token != tt.eos_token:
        problems.append(f"end-of-turn token differs (student {st.eos_token!r}, teacher {tt.eos_token!r})")
    if (st.chat_template or "") != (tt.chat_template or ""):
        problems.append("chat templates differ")
    if problems:
        raise IncompatibleModelsError(
            f"teacher {teacher} cannot be distilled into student {student} token by token: "
            + "; ".join(problems) + ". Use a teacher of the student's tokenizer family, or sequence-level "
            "distillation (fkl with mode: sequence) on the teacher's rollouts.")
