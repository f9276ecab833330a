"""Tiny offline models and data for tests, demos and the CPU plan.

    python -m tinyworld.models OUT_DIR [--seed 0]

builds, in well under a minute on two CPU cores and with no network:

- ``OUT_DIR/teacher``: a 4-layer Qwen3 (hidden 128, vocab 512) briefly trained on synthetic
  arithmetic written as chat turns (loss on the answers only), so it answers in the
  ``\\boxed{}`` format and is right about 40% of the time (greedy): GRPO groups are mixed;
- ``OUT_DIR/student``: a 2-layer Qwen3 (hidden 64, vocab 512) trained for fewer steps (weaker);
- ``OUT_DIR/other_teacher``: a model with a *different* tokenizer, for the tests that
  distillation refuses an incompatible pair;
- ``OUT_DIR/data/{labeled,prompts,eval}.jsonl``: rows ``{"problem", "answer"}``.

Teacher and student share one byte-level BPE tokenizer with a Qwen-style chat template
(``{% generation %}`` markers, so assistant-only losses work). The build is
deterministic under ``--seed`` and skipped when ``OUT_DIR/BUILT`` names this recipe
and seed (an older build is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

RECIPE = 2  # bump when the models or data change: an older build is then rebuilt
VOCAB = 512  # model vocab_size (the tokenizer may use fewer; Qwen3 pads its vocab the same way)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen-style; {% generation %} marks what an assistant-only loss trains on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
from runners.data import INSTRUCTION  # noqa: E402  (one instruction everywhere)


def make_problem(rng: random.Random) -> dict[str, str]:
    """One arithmetic problem; answers are integers or fractions, checkable in \\boxed{}."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)  # small tables: a tiny model learns some of them
    op = rng.choice(["+", "-", "*", "/"])
    if op == "+":
        return {"problem": f"What is {a} + {b}?", "answer": str(a + b)}
    if op == "-":
        return {"problem": f"What is {a} - {b}?", "answer": str(a - b)}
    if op == "*":
        return {"problem": f"What is {a} * {b}?", "answer": str(a * b)}
    from fractions import Fraction

    f = Fraction(a, b)
    ans = str(f.numerator) if f.denominator == 1 else f"\\frac{{{f.numerator}}}{{{f.denominator}}}"
    return {"problem": f"What is {a} / {b}?", "answer": ans}


def solution_text(row: dict[str, str]) -> str:
    return f"The answer is \\boxed{{{row['answer']}}}."


def chat_text(row: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{row['problem']} {INSTRUCTION}"},
            {"role": "assistant", "content": solution_text(row)}]


def build_tokenizer(texts: list[str], vocab_size: int, out: Path, model_max_length: int = 512,
                    split_digits: bool = False):
    """A byte-level BPE tokenizer with the shared specials and chat template, saved to ``out``
    (``split_digits``: one token per digit, as arithmetic worlds want)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        padding_side="left", model_max_length=model_max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def tiny_qwen3(tokenizer, layers: int, hidden: int, intermediate: int, vocab_size: int = 0):
    """An untrained Qwen3 of the given shape that ends turns with the tokenizer's EOS."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=max(vocab_size, len(tokenizer)), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
        max_position_embeddings=512, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_model(tokenizer, layers: int, hidden: int, seed: int, train_rows: list[dict], steps: int, out: Path,
                vocab_size: int = VOCAB) -> None:
    """A Qwen3 of the given shape, trained ``steps`` steps on the chat-formatted rows."""
    import torch

    torch.manual_seed(seed)
    model = tiny_qwen3(tokenizer, layers, hidden, hidden * 2, vocab_size)
    if steps:
        texts = [tokenizer.apply_chat_template(chat_text(r), tokenize=False) for r in train_rows]
        # loss on the answer only: with the prompt in the loss the model spends itself on predicting
        # problems and stays near 0% right (about 40% greedy for the teacher with this mask)
        prompt_lens = [len(tokenizer(tokenizer.apply_chat_template(chat_text(r)[:1], tokenize=False,
                                                                   add_generation_prompt=True))["input_ids"])
                       for r in train_rows]
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)  # linear decay: sharper at the end
        gen = random.Random(seed)
        model.train()
        for _ in range(steps):
            idx = gen.sample(range(len(texts)), 32)
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, padding_side="right")
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            for row, i in enumerate(idx):
                labels[row, : prompt_lens[i]] = -100
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build(out_dir: str | Path, seed: int = 0, teacher_steps: int = 300, student_steps: int = 60) -> Path:
    """Build everything under ``out_dir``; skipped when a build of this recipe and seed is there.

    The build happens in a sibling temporary directory that replaces ``out_dir`` only once
    complete, so a reader never sees half-built models and an interrupted build leaves no
    ``BUILT`` marker behind."""
    import shutil

    out = Path(out_dir)
    want = {"recipe": RECIPE, "seed": seed}
    if _built(out, want):
        return out
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)  # tiny matrices: a second thread buys little and thrashes on a busy box
    t0 = time.time()
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = random.Random(seed)
    rows = [make_problem(rng) for _ in range(2400)]
    train, labeled, prompts, evals = rows[:1600], rows[1600:1856], rows[1856:2112], rows[2112:2176]
    _write_data(tmp / "data", {"labeled": labeled, "prompts": prompts, "eval": evals})

    probe = build_tokenizer(["x"], 300, tmp / "_tmp_tok")  # template rendering needs a tokenizer
    texts = [probe.apply_chat_template(chat_text(r), tokenize=False) for r in rows[:800]]
    tok = build_tokenizer(texts, VOCAB, tmp / "tokenizer")
    build_model(tok, layers=4, hidden=128, seed=seed, train_rows=train, steps=teacher_steps, out=tmp / "teacher")
    build_model(tok, layers=2, hidden=64, seed=seed + 1, train_rows=train, steps=student_steps, out=tmp / "student")
    other = build_tokenizer(texts[:200], 320, tmp / "other_tokenizer")
    build_model(other, layers=2, hidden=64, seed=seed + 2, train_rows=train, steps=0, out=tmp / "other_teacher",
                vocab_size=320)
    shutil.rmtree(tmp / "_tmp_tok", ignore_errors=True)
    (tmp / "BUILT").write_text(json.dumps({**want, "seconds": round(time.time() - t0, 1)}))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _built(out: Path, want: dict) -> bool:
    """Whether ``out`` holds a complete build of this recipe and seed."""
    try:
        have = json.loads((out / "BUILT").read_text())
    except (OSError, ValueError):
        return False
    return {k: have.get(k) for k in want} == want


def _write_data(folder: Path, parts: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        with open(folder / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tinyworld.models", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    out = build(args.out_dir, seed=args.seed)
    print(f"tiny models and data in {out} ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
