"""Forward-KL warmup (bridge, part 1): fit the student to the teacher's rollouts.

    python -m runners.fkl STAGE.json

Two modes:

- ``sequence`` (default, always available): supervised fine-tuning on the teacher's text
  (TRL ``SFTTrainer``, loss on completion tokens only). Minimising the student's NLL on
  teacher samples is a Monte-Carlo estimate of forward KL(teacher || student) at the
  sequence level; it works across tokenizers because only text crosses over.
- ``token``: token-level forward KL on the teacher's full next-token distributions over
  the same rollouts (TRL ``GKDTrainer`` with ``lmbda=0``: no student sampling, and
  ``beta=0``: forward KL). Needs one tokenizer for both; refused before any weights load
  otherwise (runners/_train.check_distillable).

Reads ``data.rollouts`` (a rollout stage's ``rollouts.jsonl``); ``teacher`` for token mode.
Params: mode, epochs, steps (optional cap), learning_rate, max_length, batch_size
(sequences per optimizer step over all processes), per_device_batch_size (micro-batch; the
rest is gradient accumulation), lora (LoRA adapters merged into the saved model, like
grpo's), seed, save_steps.
"""

from __future__ import annotations

import json

from runners import _train
from runners.common import MetricWriter, StageSpec, dataset_path, model_path, run_main
from runners.data import load_rows
from s2d_plan.contract import ConfigurationError


def rollout_rows(spec: StageSpec) -> list[dict]:
    ref = spec.inputs.get("data.rollouts") or spec.data.rollouts
    if not ref:
        raise ConfigurationError("fkl: the stage needs data.rollouts (\"@rollout_stage\" or a JSONL path)")
    path = dataset_path(ref)
    rows = load_rows(str(path))
    bad = [i for i, r in enumerate(rows) if "prompt" not in r or "completion" not in r]
    if bad:
        raise ConfigurationError(f"fkl: {path}: rows need prompt and completion (row {bad[0]} has "
                                 f"{', '.join(rows[bad[0]])})")
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def config(spec: StageSpec, device: str):
    """The SFTConfig (sequence) or GKDConfig (token) this stage trains with: ``batch_size``
    sequences per optimizer step over all processes, in micro-batches of
    ``per_device_batch_size``, at the stage's learning rate."""
    p = spec.params
    per_device, accum = _train.batch_layout("fkl", int(p.batch_size), p.per_device_batch_size, _train.world_size())
    common = dict(**_train.trainer_args(spec, p, device), num_train_epochs=float(p.epochs),
                  per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
                  max_length=int(p.max_length))
    if p.mode == "sequence":
        from trl import SFTConfig

        return SFTConfig(**common, completion_only_loss=True)
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKD lives in trl.experimental in TRL 1.16
    from trl.experimental.gkd import GKDConfig

    return GKDConfig(**common, lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
                     teacher_model_init_kwargs=common["model_init_kwargs"])


def run(spec: StageSpec, writer: MetricWriter) -> dict:
    p = spec.params
    student = model_path(spec.inputs["policy"])
    teacher = None
    if p.mode == "token":
        if not spec.inputs.get("teacher"):
            raise ConfigurationError("fkl: mode token needs a teacher")
        teacher = model_path(spec.inputs["teacher"])
        _train.check_distillable(student, teacher)  # before any weights load
    device = _train.device_of(spec)
    rows = rollout_rows(spec)
    if not rows:
        raise ConfigurationError("fkl: the rollouts are empty")
    cfg = config(spec, device)
    peft = _train.lora_config(bool(p.lora), "fkl")

    from datasets import Dataset

    if p.mode == "sequence":
        from trl import SFTTrainer

        trainer = SFTTrainer(model=student, args=cfg, train_dataset=Dataset.from_list(rows),
                             callbacks=[_train.metrics_callback(writer)], peft_config=peft)
    else:
        from transformers import AutoTokenizer
        from trl.experimental.gkd import GKDTrainer

        messages = [{"messages": r["prompt"] + r["completion"]} for r in rows]
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=Dataset.from_list(messages),
                             processing_class=AutoTokenizer.from_pretrained(student),
                             callbacks=[_train.metrics_callback(writer)], peft_config=peft)
    summary = _train.train_and_save(trainer, spec)
    (spec.work_dir / "fkl.json").write_text(json.dumps({"mode": p.mode, "rows": len(rows), "lora": bool(p.lora)}))
    return {"mode": p.mode, "rows": len(rows), "lora": bool(p.lora), **summary}


if __name__ == "__main__":
    run_main(run)
