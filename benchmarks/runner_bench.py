"""Time per training step of the grpo and opd runners vs a plain TRL script, side by side.

    .venv/bin/python -m benchmarks.runner_bench [--tiny DIR] [--steps 12] [--reps 3]

Both sides train the same tiny model (tinyworld/models.py) with the same TRL configuration;
the plain script is what a user would write: the trainer, a dataset and (for GRPO) a
math-verify reward called in-process. Runs alternate (runner, plain, runner, ...) so that
load from other processes on the machine hits both alike. Per-step time: the gaps between
consecutive step logs after the first (warm-up), taking for each step the fastest of the
reps (the machine is shared; every rep does the same work); start-up is launch ->
first step log, less one step. Imports are timed apart. Prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PLAIN_GRPO = r'''
import json, sys, time
import torch
torch.set_num_threads(2)
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from math_verify import parse, verify
cfg = json.loads(sys.argv[1])
rows = [json.loads(l) for l in open(cfg["data"])][: cfg["count"]]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"] + " Put the final answer in \\boxed{}."}],
                         "answer": r["answer"]} for r in rows])
def reward(prompts, completions, answer, **kw):
    return [float(verify(parse("\\boxed{" + a + "}"), parse(c[-1]["content"]))) for c, a in zip(completions, answer)]
times = []
class T(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs: times.append(time.time())
args = GRPOConfig(output_dir=cfg["out"], max_steps=cfg["steps"], learning_rate=1e-5, logging_steps=1, save_strategy="no",
                  report_to="none", seed=0, use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
                  num_generations=cfg["G"], per_device_train_batch_size=cfg["G"] * cfg["P"], max_completion_length=cfg["L"],
                  beta=0.0, loss_type="dapo", temperature=1.0)
GRPOTrainer(model=cfg["model"], reward_funcs=[reward], args=args, train_dataset=ds, callbacks=[T()]).train()
print("STEP_TIMES " + json.dumps(times))
'''

PLAIN_OPD = r'''
import json, sys, time
import torch
torch.set_num_threads(2)
from datasets import Dataset
from transformers import TrainerCallback
from trl import DistillationConfig, DistillationTrainer
cfg = json.loads(sys.argv[1])
rows = [json.loads(l) for l in open(cfg["data"])][: cfg["count"]]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"] + " Put the final answer in \\boxed{}."}]}
                        for r in rows])
times = []
class T(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs: times.append(time.time())
args = DistillationConfig(output_dir=cfg["out"], max_steps=cfg["steps"], learning_rate=1e-5, logging_steps=1,
                          save_strategy="no", report_to="none", seed=0, use_cpu=True, bf16=False,
                          gradient_checkpointing=False, disable_tqdm=True, per_device_train_batch_size=cfg["P"],
                          max_completion_length=cfg["L"], beta=1.0, temperature=1.0)
DistillationTrainer(model=cfg["model"], teacher_model=cfg["teacher"], args=args, train_dataset=ds, callbacks=[T()]).train()
print("STEP_TIMES " + json.dumps(times))
'''


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])][1:]  # the first gap includes warm-up


def per_step(times: list[float]) -> float:
    g = gaps(times)
    return statistics.median(g) if g else float("nan")


def robust_step(runs: list[list[float]]) -> float:
    """Step k does the same work in every rep (same seed, same completions), so the fastest rep
    of each step is the one least slowed by other load on the machine; average those."""
    per_rep = [gaps(t) for t in runs]
    n = min(len(g) for g in per_rep)
    return statistics.mean(min(g[k] for g in per_rep) for k in range(n))


def run_runner(kind: str, tiny: Path, work: Path, steps: int, G: int, P: int, L: int) -> tuple[list[float], float]:
    d = Path(tempfile.mkdtemp(dir=work))
    if kind == "grpo":
        stage = {"id": "b", "kind": "grpo", "policy": str(tiny / "teacher"),
                 "data": {"labeled": {"source": str(tiny / "data/labeled.jsonl"), "count": 200}},
                 "params": {"steps": steps, "num_generations": G, "prompts_per_step": P, "max_completion_length": L,
                            "learning_rate": 1e-5, "save_steps": 10_000}}
        inputs = {"policy": str(tiny / "teacher")}
    else:
        stage = {"id": "b", "kind": "opd", "policy": str(tiny / "student"), "teacher": str(tiny / "teacher"),
                 "data": {"prompts": {"source": str(tiny / "data/prompts.jsonl"), "count": 200}},
                 "params": {"steps": steps, "prompts_per_step": P, "max_completion_length": L, "learning_rate": 1e-5,
                            "save_steps": 10_000}}
        inputs = {"policy": str(tiny / "student"), "teacher": str(tiny / "teacher")}
    spec = {"run_id": "bench", "attempt": 1, "stage": stage, "inputs": inputs, "output_dir": str(d / "out"),
            "work_dir": str(d / "work"), "metrics_path": str(d / "metrics.jsonl"), "device": "cpu"}
    (d / "spec.json").write_text(json.dumps(spec))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", f"runners.{kind}", str(d / "spec.json")], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{kind} runner failed:\n{r.stderr[-2000:]}")
    times = [m["time"] for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
             if m.get("key") == "loss"]
    return times, times[0] - t0 - per_step(times)


def run_plain(kind: str, tiny: Path, work: Path, steps: int, G: int, P: int, L: int) -> tuple[list[float], float]:
    d = Path(tempfile.mkdtemp(dir=work))
    cfg = {"out": str(d), "steps": steps, "G": G, "P": P, "L": L, "count": 200}
    if kind == "grpo":
        cfg.update(model=str(tiny / "teacher"), data=str(tiny / "data/labeled.jsonl"))
        script = PLAIN_GRPO
    else:
        cfg.update(model=str(tiny / "student"), teacher=str(tiny / "teacher"), data=str(tiny / "data/prompts.jsonl"))
        script = PLAIN_OPD
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], cwd=d, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"plain {kind} failed:\n{r.stderr[-2000:]}")
    times = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("STEP_TIMES "))[11:])
    return times, times[0] - t0 - per_step(times)


def import_time(code: str) -> float:
    t = time.time()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", default=None, help="tiny models dir (built if missing)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-G", type=int, default=8)
    ap.add_argument("-P", type=int, default=4)
    ap.add_argument("-L", type=int, default=32)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s2d-bench-"))
    tiny = Path(a.tiny or work / "tiny").resolve()  # the plain script runs in another directory
    subprocess.run([sys.executable, "-m", "tinyworld.models", str(tiny)], cwd=REPO, check=True, capture_output=True)
    print(f"tiny models: {tiny}; {a.steps} steps, G={a.G}, prompts/step={a.P}, completion<={a.L} tokens, "
          f"{a.reps} alternating reps, CPU, {os.cpu_count()} cores")
    print(f"imports: python -c 'import runners.grpo' {import_time('import runners.grpo'):.2f}s (light: no torch); "
          f"python -c 'import trl.GRPOTrainer, DistillationTrainer' "
          f"{import_time('from trl import GRPOTrainer, DistillationTrainer'):.2f}s (both sides pay it)")
    print(f"{'kind':5} {'runner s/step':>14} {'plain s/step':>13} {'ratio':>6}   {'runner start s':>14} "
          f"{'plain start s':>13}")
    for kind in ("grpo", "opd"):
        rs, ps = [], []
        for _ in range(a.reps):
            rs.append(run_runner(kind, tiny, work, a.steps, a.G, a.P, a.L))
            ps.append(run_plain(kind, tiny, work, a.steps, a.G, a.P, a.L))
        r_step = robust_step([x[0] for x in rs])
        p_step = robust_step([x[0] for x in ps])
        r_med = statistics.median(per_step(x[0]) for x in rs)
        p_med = statistics.median(per_step(x[0]) for x in ps)
        r_start = statistics.median(x[1] for x in rs)
        p_start = statistics.median(x[1] for x in ps)
        print(f"{kind:5} {r_step:14.3f} {p_step:13.3f} {r_step / p_step:6.3f}   {r_start:14.2f} {p_start:13.2f}"
              f"   (medians: {r_med:.3f} vs {p_med:.3f}, ratio {r_med / p_med:.3f})")


if __name__ == "__main__":
    main()
