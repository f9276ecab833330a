#!/usr/bin/env bash
# Run every runner kind in bf16 on CUDA on the tiny models and print step times.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [STEPS]
#
# One prepared script for a lent GPU machine: builds the tiny models, runs probe, grpo,
# rollout, fkl (sequence and token), opd and eval on device "cuda", checks each output is
# COMPLETE and its model saved in bf16, and prints wall time and median step time per
# kind (plus grpo/opd on 2 GPUs under accelerate + FSDP when 2 are visible). Without CUDA
# it says so and exits 0, so CI without a GPU is not broken by it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: SKIPPED - torch sees no CUDA device here (nothing to check)."
  exit 0
fi
OUT="${1:-$(mktemp -d -t s2d-gpu-XXXX)}"
STEPS="${2:-8}"
"$PY" -m tinyworld.models "$OUT/tiny"
"$PY" - "$OUT" "$STEPS" <<'EOF'
import json, statistics, subprocess, sys, time
from pathlib import Path
import torch
from s2d_plan.run.launch import stage_command

out, steps = Path(sys.argv[1]), int(sys.argv[2])
tiny = out / "tiny"
T, S = str(tiny / "teacher"), str(tiny / "student")
lab = {"source": str(tiny / "data/labeled.jsonl"), "count": 128}
prompts = {"source": str(tiny / "data/prompts.jsonl"), "prompt_field": "problem", "count": 128}
print(f"device: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}")
try:
    import vllm  # noqa: F401
    print("vllm: installed (grpo/opd/rollout/eval/probe use it)")
except ImportError:
    print("vllm: not installed (transformers generate)")

def run(sid, kind, stage, inputs, gpus=1):
    d = out / sid
    d.mkdir(parents=True, exist_ok=True)
    stage = {"id": sid, "kind": kind, **stage}
    spec = {"run_id": "gpu", "attempt": 1, "stage": stage, "inputs": inputs, "output_dir": str(d / "out"),
            "work_dir": str(d / "work"), "metrics_path": str(d / "metrics.jsonl"), "device": "cuda"}
    (d / "spec.json").write_text(json.dumps(spec))
    t = time.time()
    r = subprocess.run(stage_command(kind, d / "spec.json", gpus=gpus, device="cuda"), capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode:
        print(f"{sid:18} FAILED rc={r.returncode}\n{r.stderr[-3000:]}")
        return False
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    t = [m["time"] for m in lines if m.get("key") == "loss"]  # one loss line per optimizer step
    st = [b - a for a, b in zip(t, t[1:])][1:]  # the first gap includes warm-up
    step = f"{statistics.median(st):.3f}s/step" if st else "-"
    dtype = ""
    cfg = d / "out" / "model" / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        dtype = c.get("dtype") or c.get("torch_dtype") or "?"
    print(f"{sid:18} ok  wall {wall:6.1f}s  {step:>14}  saved dtype {dtype or '-'}")
    return True

small = {"max_new_tokens": 64}
results = [
    run("probe", "probe", {"policy": T, "data": {"labeled": {**lab, "spend": False}},
                           "params": {"num_prompts": 32, "samples_per_prompt": 8, **small}}, {"policy": T}),
    run("grpo", "grpo", {"policy": T, "data": {"labeled": lab},
                         "params": {"steps": steps, "num_generations": 8, "prompts_per_step": 8,
                                    "max_completion_length": 64, "beta": 0.01, "learning_rate": 1e-5}},
        {"policy": T}),
    run("rollout", "rollout", {"policy": T, "data": {"prompts": prompts},
                               "params": {"samples_per_prompt": 4, **small}}, {"policy": T}),
    run("fkl_sequence", "fkl", {"policy": S, "data": {"rollouts": "@rollout"},
                                "params": {"steps": steps, "batch_size": 16, "max_length": 128}},
        {"policy": S, "data.rollouts": str(out / "rollout" / "out")}),
    run("fkl_token", "fkl", {"policy": S, "teacher": T, "data": {"rollouts": "@rollout"},
                             "params": {"mode": "token", "steps": steps, "batch_size": 16, "max_length": 128}},
        {"policy": S, "teacher": T, "data.rollouts": str(out / "rollout" / "out")}),
    run("opd", "opd", {"policy": S, "teacher": T, "data": {"prompts": prompts},
                       "params": {"steps": steps, "prompts_per_step": 16, "max_completion_length": 64}},
        {"policy": S, "teacher": T}),
    run("eval", "eval", {"policy": T, "data": {"eval": [{"name": "arith", "source": str(tiny / "data/eval.jsonl"),
                                                         "size": 64}]}, "params": {"k": 4, **small}}, {"policy": T}),
]
ok = all(results)
if torch.cuda.device_count() >= 2:
    ok &= run("grpo_2gpu_fsdp", "grpo", {"policy": T, "data": {"labeled": lab},
              "params": {"steps": steps, "num_generations": 8, "prompts_per_step": 8, "max_completion_length": 64}},
              {"policy": T}, gpus=2)
    ok &= run("opd_2gpu_fsdp", "opd", {"policy": S, "teacher": T, "data": {"prompts": prompts},
              "params": {"steps": steps, "prompts_per_step": 16, "max_completion_length": 64}},
              {"policy": S, "teacher": T}, gpus=2)
print("gpu_check:", "all runners ok" if ok else "FAILURES above")
sys.exit(0 if ok else 1)
EOF
