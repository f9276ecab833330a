"""Sampling a policy on problems: vLLM when installed with a GPU, else batched transformers
``generate``. Shared by rollout, eval and probe.

Determinism: on the transformers path each batch reseeds torch with ``seed + batch``, so a
run with the same seed, batch size and device gives the same samples.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

from runners.data import as_chat


@dataclass
class Sample:
    problem_index: int  # position in the list of problems given
    sample: int  # 0..n-1
    text: str
    prompt_tokens: int
    completion_tokens: int


def _vllm_wanted(device: str) -> bool:
    if os.environ.get("S2D_USE_VLLM") == "0":
        return False
    return device == "cuda" and importlib.util.find_spec("vllm") is not None


def sample(model_path: str, problems: list, n: int, max_new_tokens: int, temperature: float, seed: int,
           device: str, batch_size: int = 64) -> list[Sample]:
    """``n`` completions per problem; ``temperature <= 0`` means greedy (then ``n`` should be 1)."""
    if _vllm_wanted(device):
        try:
            return _sample_vllm(model_path, problems, n, max_new_tokens, temperature, seed)
        except Exception as exc:  # vLLM is an accelerator, never a requirement
            print(f"vLLM sampling failed ({type(exc).__name__}: {exc}); using transformers generate",
                  file=sys.stderr)
    return _sample_hf(model_path, problems, n, max_new_tokens, temperature, seed, device, batch_size)


def _sample_hf(model_path, problems, n, max_new_tokens, temperature, seed, device, batch_size) -> list[Sample]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    greedy = temperature <= 0
    jobs = [(i, s) for i in range(len(problems)) for s in range(n)]
    texts = [tok.apply_chat_template(as_chat(p), tokenize=False, add_generation_prompt=True) for p in problems]
    eos = model.generation_config.eos_token_id
    out: list[Sample] = []
    for b, start in enumerate(range(0, len(jobs), batch_size)):
        chunk = jobs[start:start + batch_size]
        enc = tok([texts[i] for i, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(seed + b)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                                 temperature=None if greedy else temperature, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos)
        width = enc["input_ids"].shape[1]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        for row, (i, s) in enumerate(chunk):
            ids = gen[row, width:].tolist()
            # the completion ends at the first end token (eos or pad); count it as generated
            ends = [k for k, t in enumerate(ids) if t == tok.pad_token_id or (t in eos if isinstance(eos, list) else t == eos)]
            length = ends[0] + 1 if ends else len(ids)
            text = tok.decode(ids[:length], skip_special_tokens=True)
            out.append(Sample(i, s, text, int(prompt_lens[row]), length))
    return out


def _sample_vllm(model_path, problems, n, max_new_tokens, temperature, seed) -> list[Sample]:
    from vllm import LLM, SamplingParams  # GPU extra only

    llm = LLM(model=model_path, seed=seed, dtype="bfloat16")
    params = SamplingParams(n=n, temperature=max(temperature, 0.0), max_tokens=max_new_tokens, seed=seed)
    results = llm.chat([as_chat(p) for p in problems], params, use_tqdm=False)
    out = []
    for i, res in enumerate(results):
        for s, o in enumerate(res.outputs):
            out.append(Sample(i, s, o.text, len(res.prompt_token_ids), len(o.token_ids)))
    return out
