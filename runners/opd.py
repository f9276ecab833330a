"""On-policy distillation (bridge, part 2): the student samples, the teacher grades every token.

    python -m runners.opd STAGE.json

TRL ``DistillationTrainer``: each step the student samples one completion per prompt, and
the loss is the generalized JSD between student and teacher next-token distributions over
the full vocabulary on those student tokens; ``beta = 1`` (the default) is the per-token
reverse KL(student || teacher) of the paper's Stage 2b. The teacher must share the
student's tokenizer and vocabulary: checked from tokenizer files and configs *before any
weights load*, with ``IncompatibleModelsError`` naming what differs.

Reads ``data.prompts`` (or ``data.labeled``, whose answers are ignored). Params: steps,
learning_rate, beta, max_completion_length, temperature, prompts_per_step (sequences per
optimizer step, generated at once), per_device_batch_size (micro-batch; the rest is
gradient accumulation), lora (LoRA adapters on the student, merged into the saved model
like grpo's), vllm (passed to DistillationConfig's ``vllm_*`` fields), seed, save_steps.
Resumes from the newest complete checkpoint in ``work_dir/checkpoints``.
"""

from __future__ import annotations

from runners import _train
from runners.common import MetricWriter, StageSpec, model_path, run_main
from runners.data import as_chat, stage_prompts
from s2d_plan.contract import ConfigurationError


def config(spec: StageSpec, device: str):
    """The DistillationConfig this stage trains with: one generation of ``prompts_per_step``
    completions per optimizer step (micro-batches of ``per_device_batch_size`` with gradient
    accumulation), the stage's learning rate and vLLM settings as the compiler wrote them."""
    from trl import DistillationConfig

    p = spec.params
    per_device, accum = _train.batch_layout("opd", int(p.prompts_per_step), p.per_device_batch_size,
                                            _train.world_size())
    args = _train.trainer_args(spec, p, device)
    return DistillationConfig(
        **args,
        **_train.vllm_args(p, device),
        teacher_model_init_kwargs=args["model_init_kwargs"],
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        beta=float(p.beta),
        max_completion_length=int(p.max_completion_length),
        temperature=float(p.temperature),
    )


def run(spec: StageSpec, writer: MetricWriter) -> dict:
    p = spec.params
    if not spec.inputs.get("teacher"):
        raise ConfigurationError("opd: the stage needs a teacher")
    student, teacher = model_path(spec.inputs["policy"]), model_path(spec.inputs["teacher"])
    _train.check_distillable(student, teacher)  # refuse before any weights load
    device = _train.device_of(spec)
    rows = stage_prompts(spec.data)
    cfg = config(spec, device)

    from datasets import Dataset
    from trl import DistillationTrainer

    ds = Dataset.from_list([{"prompt": as_chat(r["problem"])} for r in rows])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds,
                                  callbacks=[_train.metrics_callback(writer)],
                                  peft_config=_train.lora_config(bool(p.lora), "opd"))
    return {**_train.train_and_save(trainer, spec), "prompts": len(rows), "lora": bool(p.lora)}


if __name__ == "__main__":
    run_main(run)
