"""Rollout stage: N samples per prompt from a policy, written as a dataset.

    python -m runners.rollout STAGE.json

Reads ``data.prompts`` (or ``data.labeled``, whose answers then score each sample) and
writes ``rollouts.jsonl``, one row per sample::

    {"index", "sample", "problem", "prompt": [chat], "completion": [chat], "text",
     "prompt_tokens", "completion_tokens", "answer"?, "score"?, "status"?}

``prompt`` / ``completion`` are conversational, ready for TRL's SFT (the fkl stage).
Deterministic under ``seed`` (see runners/_sample.py). Params: samples_per_prompt,
max_new_tokens, temperature, seed, batch_size, vllm (memory fraction, tensor parallel size
and context length for ``vllm.LLM``).
"""

from __future__ import annotations

import json

from runners import _train
from runners._sample import sample
from runners.common import MetricWriter, StageSpec, model_path, run_main
from runners.data import as_chat, stage_prompts
from s2d_plan.contract import ROLLOUTS_FILE


def run(spec: StageSpec, writer: MetricWriter) -> dict:
    p = spec.params
    device = _train.device_of(spec)
    rows = stage_prompts(spec.data)
    labeled = all("answer" in r for r in rows)
    verifier = None
    if labeled:
        from runners.verifier import shared_verifier

        verifier = shared_verifier()
    samples = sample(model_path(spec.inputs["policy"]), [r["problem"] for r in rows], int(p.samples_per_prompt),
                     int(p.max_new_tokens), float(p.temperature), int(p.seed), device, int(p.batch_size), p.vllm)
    verdicts = None
    if verifier is not None:
        verdicts = verifier.score_many([rows[s.problem_index]["answer"] for s in samples], [s.text for s in samples])
    with open(spec.work_dir / ROLLOUTS_FILE, "w", encoding="utf-8") as f:
        for k, s in enumerate(samples):
            r = rows[s.problem_index]
            out = {"index": r["index"], "sample": s.sample, "problem": r["problem"], "prompt": as_chat(r["problem"]),
                   "completion": [{"role": "assistant", "content": s.text}], "text": s.text,
                   "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens}
            if verdicts is not None:
                out.update(answer=r["answer"], score=verdicts[k].score, status=verdicts[k].status)
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    n = max(1, len(samples))
    summary = {"prompts": len(rows), "samples": len(samples),
               "mean_completion_tokens": sum(s.completion_tokens for s in samples) / n}
    writer.log(0, "rollout/samples", len(samples))
    writer.log(0, "rollout/mean_completion_tokens", summary["mean_completion_tokens"])
    if verdicts is not None:
        from runners.verifier import batch_metrics

        for key, value in batch_metrics(verdicts).items():
            writer.log(0, key, value)
        summary["accuracy"] = sum(v.score for v in verdicts) / n
    writer.artifact("rollouts", ROLLOUTS_FILE)
    return summary


if __name__ == "__main__":
    run_main(run)
