"""GRPO stage: TRL ``GRPOTrainer`` on the stage's labeled slice with the verifier as reward.

    python -m runners.grpo STAGE.json

How this departs from a bare TRL script:

- one optimizer step = ``prompts_per_step`` prompts x ``num_generations`` samples (one
  generation per step: no stale completions), split across processes;
- the reward is the hard-timeout verifier (runners/verifier.py), which also logs per batch
  ``verifier/accuracy``, ``verifier/parse_failures``, ``verifier/timeouts``,
  ``verifier/bad_gold`` and ``signal_yield`` (share of prompts whose G samples disagree:
  the only prompts GRPO learns from); a run of all-zero batches raises a visible warning;
- every TRL log line (reward, kl, entropy, completions/mean_length, loss, ...) goes to the
  stage's metric stream at its global step;
- checkpoints go to ``work_dir/checkpoints``; a restarted stage resumes from the newest
  complete one, optimizer, RNG and data position included (the HF Trainer skips the
  batches already seen); ``data_order.jsonl`` records which prompts each step used.

Params (defaults below): steps, num_generations, prompts_per_step, learning_rate, beta
(KL coefficient; 0 loads no reference model), loss_type (TRL's), max_completion_length,
temperature, seed, lora (LoRA adapters, merged on save), save_steps, per_device_batch_size
(micro-batch in completions; default: the whole step in one pass), vllm (memory fraction,
tensor parallel size, sleep mode, colocate or server: passed to GRPOConfig's ``vllm_*``).
"""

from __future__ import annotations

import json

from runners import _train
from runners.common import MetricWriter, StageSpec, model_path, process_rank, run_main
from runners.data import as_chat, load_labeled
from s2d_plan.contract import ConfigurationError


def batch_layout(p, world: int) -> tuple[int, int]:
    """(per-device micro-batch, gradient accumulation) for one step of P x G completions."""
    return _train.batch_layout("grpo", int(p.prompts_per_step) * int(p.num_generations), p.per_device_batch_size,
                               world)


def order_logger(spec: StageSpec):
    """A TrainerCallback-free record of the prompts each step used (resume checks read it)."""
    path = spec.work_dir / "data_order.jsonl"

    def record(step: int, indices: list[int]) -> None:
        if process_rank() == 0:
            with open(path, "a") as f:
                f.write(json.dumps({"step": step, "indices": sorted(set(indices))}) + "\n")

    return record


def config(spec: StageSpec, device: str):
    """The GRPOConfig this stage trains with: the stage's learning rate, batch layout and
    vLLM settings exactly as the compiler wrote them."""
    from trl import GRPOConfig

    p = spec.params
    per_device, accum = batch_layout(p, _train.world_size())
    return GRPOConfig(
        **_train.trainer_args(spec, p, device),
        **_train.vllm_args(p, device),
        num_generations=int(p.num_generations),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        beta=float(p.beta),
        loss_type=str(p.loss_type),
        max_completion_length=int(p.max_completion_length),
        temperature=float(p.temperature),
    )


def run(spec: StageSpec, writer: MetricWriter) -> dict:
    p = spec.params
    device = _train.device_of(spec)
    from runners.verifier import shared_verifier

    verifier = shared_verifier()  # its workers start while the model loads
    if spec.data.labeled is None:
        raise ConfigurationError("grpo: the stage needs data.labeled")
    rows = load_labeled(spec.data.labeled)
    batch_layout(p, _train.world_size())  # a step that does not split is refused before any weights load

    from datasets import Dataset
    from trl import GRPOTrainer

    ds = Dataset.from_list([{"prompt": as_chat(r["problem"]), "answer": r["answer"], "index": r["index"]}
                            for r in rows])
    cfg = config(spec, device)
    reward = _train.verifier_reward(verifier, writer if process_rank() == 0 else None)
    record = order_logger(spec)

    def reward_with_order(prompts, completions, answer, index=None, trainer_state=None, **kw):
        if trainer_state is not None and index is not None:
            record(trainer_state.global_step + 1, list(index))
        return reward(prompts, completions, answer, index=index, trainer_state=trainer_state, **kw)

    reward_with_order.__name__ = "accuracy_reward"
    trainer = GRPOTrainer(
        model=model_path(spec.inputs["policy"]),
        reward_funcs=[reward_with_order],
        args=cfg,
        train_dataset=ds,
        callbacks=[_train.metrics_callback(writer)],
        peft_config=_train.lora_config(bool(p.lora), "grpo"),
    )
    return {**_train.train_and_save(trainer, spec), "labels_used": len(rows)}


if __name__ == "__main__":
    run_main(run)
