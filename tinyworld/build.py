"""Build tinyworld: data splits, one tokenizer, and two base models pretrained from scratch.

    python -m tinyworld.build OUT_DIR [--difficulty 1] [--seed 0] [--fast]

writes (skipped when ``OUT_DIR/world.json`` exists, so the result is cached):

- ``data/{labeled,prompts,eval,pretrain}.jsonl``: rows ``{"problem", "answer"}``, disjoint;
- ``tokenizer/``: byte-level BPE whose pre-tokenizer splits every digit on its own (a
  number's digits are separate tokens, so arithmetic is learnable at this size), with the
  Qwen-style chat template the runners use;
- ``student/`` (Qwen3, 2 layers x 64) and ``teacher/`` (4 layers x 128), both trained on the
  chat-formatted corpus (loss on the assistant turn only), 30% of whose solutions are
  corrupted (tinyworld.task.CORRUPT);
- ``world.json``: settings, parameter counts, seconds, and each model's measured base
  accuracy on the eval split (sampled avg@k at T=1, and greedy).

The two models train side by side in two processes of one thread each (~15 minutes on two
cores for difficulty 1; ``--fast`` is a smoke build for tests). The teacher must come out
clearly better than the student (a larger model learned *slower* at first in the
feasibility probe); the build says so loudly when it does not.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from pathlib import Path

from tinyworld.task import CORRUPT, boxed_answer, solution, splits

# (layers, hidden, steps, (lr, lr after LR_DROP of the steps)) from the feasibility probe
SHAPES = {"student": (2, 64, 1500, (3e-3, 3e-3)), "teacher": (4, 128, 2000, (2e-3, 1.5e-3))}
FAST_STEPS = {"student": 60, "teacher": 80}
LR_DROP = 0.7
BATCH = 32
SIZES = dict(n_eval=500, n_labeled=512, n_prompts=4096, n_pretrain=20000)
VOCAB = 384


def build_tokenizer(texts: list[str], out: Path):
    """The tiny models' tokenizer recipe (tinyworld/models.py), one token per digit."""
    from tinyworld.models import build_tokenizer as build

    return build(texts, VOCAB, out, split_digits=True)


def _chat(problem: str, answer_text: str | None = None) -> list[dict]:
    from runners.data import as_chat

    msgs = as_chat(problem)
    return msgs + ([{"role": "assistant", "content": answer_text}] if answer_text is not None else [])


def pretrain(name: str, out: str, tok_dir: str, rows: list[dict], seed: int, fast: bool,
             shape: tuple | None = None, save_at: dict[int, str] | None = None) -> dict:
    """Train one model from scratch (runs in its own process, one thread). ``shape``: (layers,
    hidden, steps, (lr, lr after LR_DROP)) instead of SHAPES[name]; ``save_at``: step -> folder
    for checkpoints on the way (a weaker model of the same run, for free)."""
    import torch
    from transformers import AutoTokenizer

    from tinyworld.models import tiny_qwen3

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    layers, hidden, steps, (lr0, lr1) = shape or SHAPES[name]
    steps = FAST_STEPS[name] if fast else steps
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = tiny_qwen3(tok, layers, hidden, hidden * 4)
    rng = random.Random(f"{name}/{seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr0, weight_decay=0.01)
    t0 = time.time()
    model.train()
    loss_ema = None
    for step in range(steps):
        for g in opt.param_groups:
            warm = min(1.0, (step + 1) / 50)
            g["lr"] = (lr0 if step < LR_DROP * steps else lr1) * warm
        loss = _batch_loss(model, tok, rng.sample(rows, BATCH), rng)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if save_at and step + 1 in save_at:
            model.save_pretrained(save_at[step + 1])
            tok.save_pretrained(save_at[step + 1])
        if step % 250 == 0 or step == steps - 1:  # a line per 250 steps, terminal or pipe alike
            spent = time.time() - t0
            eta = spent / (step + 1) * (steps - step - 1)
            print(f"  {name}: step {step + 1}/{steps} loss {loss_ema:.3f} ({spent:.0f}s, ETA {eta:.0f}s)", flush=True)
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"layers": layers, "hidden": hidden, "steps": steps,
            "params": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0, 1)}


def _batch_loss(model, tok, batch: list[dict], rng: random.Random):
    """The LM loss of one batch of chat-formatted worked solutions, on the assistant turn only."""
    prompts = [tok.apply_chat_template(_chat(r["problem"]), tokenize=False, add_generation_prompt=True)
               for r in batch]
    texts = [p + solution(r, rng, CORRUPT) + "<|im_end|>" for p, r in zip(prompts, batch)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, p in enumerate(prompts):
        labels[i, :len(tok(p, add_special_tokens=False)["input_ids"])] = -100
    return model(**enc, labels=labels).loss


def max_new_tokens(difficulty: int) -> int:
    """Completion budget: a worked step is ~40 digit-level tokens."""
    return 16 + 48 * difficulty


def base_accuracy(model_dir: str, rows: list[dict], k: int, max_new: int, seed: int = 0) -> dict:
    """Sampled avg@k at T=1 and greedy accuracy on ``rows`` (exact match of the boxed integer)."""
    import torch

    from runners._sample import sample

    torch.set_num_threads(1)
    problems = [r["problem"] for r in rows]
    sampled = sample(model_dir, problems, k, max_new, 1.0, seed, "cpu", 256)
    greedy = sample(model_dir, problems, 1, max_new, 0.0, seed, "cpu", 256)
    ok = [boxed_answer(s.text) == rows[s.problem_index]["answer"] for s in sampled]
    gok = [boxed_answer(s.text) == rows[s.problem_index]["answer"] for s in greedy]
    return {f"avg@{k}": round(sum(ok) / len(ok), 4), "greedy": round(sum(gok) / len(gok), 4), "problems": len(rows)}


def _job(args: tuple) -> tuple[str, dict]:
    name, out, tok_dir, rows, seed, fast, eval_rows, k, max_new = args
    info = pretrain(name, out, tok_dir, rows, seed, fast)
    info["base"] = base_accuracy(out, eval_rows, k, max_new)
    return name, info


def build(out_dir: str | Path, difficulty: int = 1, seed: int = 0, fast: bool = False, k: int = 4) -> dict:
    """Build (or load the cached) world under ``out_dir``; returns world.json's content."""
    out = Path(out_dir)
    if (out / "world.json").exists():
        return json.loads((out / "world.json").read_text())
    t0 = time.time()
    parts = splits(seed, difficulty, **SIZES)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        with open(out / "data" / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n")
    rng = random.Random(seed)
    texts = [f"{r['problem']} " + solution(r, rng, CORRUPT) for r in parts["pretrain"][:3000]]
    texts += ["Put the final answer in \\boxed{}. user assistant"]
    build_tokenizer(texts, out / "tokenizer")
    eval_rows = parts["eval"][:200 if fast else 500]
    jobs = [(name, str(out / name), str(out / "tokenizer"), parts["pretrain"], seed + i, fast, eval_rows, k,
             max_new_tokens(difficulty))
            for i, name in enumerate(("teacher", "student"))]
    with mp.get_context("spawn").Pool(2) as pool:
        models = dict(pool.map(_job, jobs))
    s, t = models["student"]["base"][f"avg@{k}"], models["teacher"]["base"][f"avg@{k}"]
    world = {"difficulty": difficulty, "max_new_tokens": max_new_tokens(difficulty), "seed": seed, "fast": fast, "corrupt": CORRUPT, "sizes": SIZES,
             "models": models, "teacher_margin": round(t - s, 4), "seconds": round(time.time() - t0, 1)}
    if t < s + 0.1:
        world["warning"] = (f"the teacher ({t:.1%}) is not clearly better than the student ({s:.1%}): "
                            "comparisons of teacher-based arms are not to be trusted")
        print("WARNING: " + world["warning"], flush=True)
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n")
    return world


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tinyworld.build", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--difficulty", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true", help="a smoke build: a few steps, weak models")
    a = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    world = build(a.out_dir, a.difficulty, a.seed, a.fast)
    for name in ("student", "teacher"):
        m = world["models"][name]
        print(f"{name}: {m['layers']}x{m['hidden']}, {m['params']:,} params, {m['steps']} steps in {m['seconds']}s; "
              f"base {m['base']}")
    print(f"tinyworld (difficulty {world['difficulty']}) in {a.out_dir} ({world['seconds']}s)")


if __name__ == "__main__":
    main()
