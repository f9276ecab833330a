"""OPD vs GRPO GPU-hours on the same sequences, by OPD batch (sequences per step).

    python -m benchmarks.opd_cost

The paper's setting (Qwen3-1.7B student, Qwen3-8B teacher) and the Qwen3 report's own
(Qwen3-8B student, Qwen3-32B teacher), 8 x H100-80GB, 256-token prompts, 1,024-token
completions, 240,000 sequences (7,500 labels x G=16 x 2 epochs). GRPO samples 64 prompts
x 16 per step. Prints the cost model's estimates, nothing measured on GPUs.
"""

from __future__ import annotations

import argparse

from s2d_plan.plan.registry import gpu_info, model_info
from s2d_plan.predict import costs

SEQUENCES = 7500 * 16 * 2


def main() -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.opd_cost",
                            description="OPD vs GRPO GPU-hours by OPD batch (cost model estimates).").parse_args()
    h100 = gpu_info("H100-80GB")
    print("student     teacher     GRPO GPU-h  OPD batch  OPD GPU-h  OPD/GRPO  vLLM share  sleep")
    for student, teacher in (("Qwen/Qwen3-1.7B", "Qwen/Qwen3-8B"), ("Qwen/Qwen3-8B", "Qwen/Qwen3-32B")):
        s, t = model_info(student), model_info(teacher)
        grpo = costs.grpo_cost(s, h100, 8, SEQUENCES / 16, 16, 256, 1024, 64)
        for batch in (64, 256, 1024):
            opd = costs.opd_cost(s, t, h100, 8, SEQUENCES, 256, 1024, per_step=batch)
            print(f"{student.split('/')[-1]:<11} {teacher.split('/')[-1]:<11} {grpo.gpu_hours:10.1f}  {batch:9d}  "
                  f"{opd.gpu_hours:9.1f}  {opd.gpu_hours / grpo.gpu_hours:8.2f}  {opd.vllm_fraction:10.2f}  "
                  f"{'on' if opd.sleep else 'off'}")


if __name__ == "__main__":
    main()
