"""More models for a built tinyworld: another shape, and checkpoints on the way.

    python -m tinyworld.variants WORLD OUT --shape 2x64 --steps 800 --save 200,400 [--lr 3e-3] [--seed 1]

pretrains one model of ``LAYERSxHIDDEN`` on WORLD's pretraining corpus with WORLD's
tokenizer (so it can distil to or from WORLD's models), saving ``OUT/LxH@STEP/`` at every
``--save`` step and at the end, each with a ``model.json`` (shape, steps, parameter count,
seconds, and base accuracy on 256 held-out eval problems, sampled avg@4 at T=1 and greedy).
A checkpoint that exists is not rebuilt. One process, one thread: run several side by side.

Checkpoints are the cheap way to a weaker model of the same run (a student at fewer steps)
and a small extra shape the cheap way to a teacher barely larger than the student.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tinyworld.build import SIZES, base_accuracy, pretrain
from tinyworld.task import splits

EVAL_PROBLEMS = 256


def model_dir(out: Path, layers: int, hidden: int, steps: int) -> Path:
    return out / f"{layers}x{hidden}@{steps}"


def build_variant(world: Path, out: Path, layers: int, hidden: int, steps: int, save: list[int],
                  lr: float, seed: int) -> list[dict]:
    """Train (unless every checkpoint exists) and describe each checkpoint; returns model.json rows."""
    info = json.loads((world / "world.json").read_text())
    points = sorted({s for s in save if 0 < s < steps} | {steps})
    todo = [s for s in points if not (model_dir(out, layers, hidden, s) / "model.json").exists()]
    if todo:
        parts = splits(info["seed"], info["difficulty"], **SIZES)
        t0 = time.time()
        saves = {s: str(model_dir(out, layers, hidden, s)) for s in points}
        name = f"{layers}x{hidden}"
        trained = pretrain(name, saves[steps], str(world / "tokenizer"), parts["pretrain"], seed, False,
                           shape=(layers, hidden, max(todo), (lr, lr)), save_at=saves)
        eval_rows = parts["eval"][:EVAL_PROBLEMS]
        for s in todo:
            d = model_dir(out, layers, hidden, s)
            base = base_accuracy(str(d), eval_rows, 4, info["max_new_tokens"])
            row = {"layers": layers, "hidden": hidden, "steps": s, "params": trained["params"], "seed": seed,
                   "lr": lr, "seconds": round(trained["seconds"] * s / max(todo), 1), "base": base,
                   "world": str(world)}
            (d / "model.json").write_text(json.dumps(row, indent=2) + "\n")
            print(f"{d.name}: {row}", flush=True)
        print(f"trained and evaluated in {time.time() - t0:.0f}s", flush=True)
    return [json.loads((model_dir(out, layers, hidden, s) / "model.json").read_text()) for s in points]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tinyworld.variants", description=__doc__.split("\n")[0])
    ap.add_argument("world", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", required=True, help="LAYERSxHIDDEN, e.g. 3x64")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--save", default="", help="comma-separated steps to keep a checkpoint at")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    layers, hidden = (int(x) for x in a.shape.lower().split("x"))
    save = [int(x) for x in a.save.split(",") if x.strip()]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    build_variant(a.world.resolve(), a.out.resolve(), layers, hidden, a.steps, save, a.lr, a.seed)


if __name__ == "__main__":
    main()
