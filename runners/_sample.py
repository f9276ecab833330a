"""Sampling a policy on problems: vLLM when installed with a GPU, else batched transformers
``generate``. Shared by rollout, eval and probe.

Determinism: on the transformers path each batch reseeds torch with ``seed + batch``, so a
run with the same seed, batch size and device gives the same samples.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from runners._train import use_vllm
from runners.data import as_chat
from s2d_plan.contract import VllmSettings

_ENGINES: dict[str, Any] = {}  # the vLLM engine of this process, by its arguments


@dataclass
class Sample:
    problem_index: int  # position in the list of problems given
    sample: int  # 0..n-1
    text: str
    prompt_tokens: int
    completion_tokens: int


def llm_kwargs(model_path: str, seed: int, settings: VllmSettings | None) -> dict[str, Any]:
    """``vllm.LLM`` arguments: the stage's memory fraction, tensor-parallel size and context
    length as the memory model assumed them (vLLM's own defaults where a stage has none)."""
    kw: dict[str, Any] = {"model": model_path, "seed": seed, "dtype": "bfloat16"}
    if settings is not None:
        kw.update(gpu_memory_utilization=settings.gpu_memory_utilization,
                  tensor_parallel_size=settings.tensor_parallel_size)
        if settings.max_model_len:
            kw["max_model_len"] = settings.max_model_len
    return kw


def sample(model_path: str, problems: list, n: int, max_new_tokens: int, temperature: float, seed: int,
           device: str, batch_size: int = 64, vllm: VllmSettings | None = None) -> list[Sample]:
    """``n`` completions per problem; ``temperature <= 0`` means greedy (then ``n`` should be 1).
    ``vllm``: the stage's settings, applied where vLLM runs, recorded and ignored elsewhere."""
    if use_vllm(device):
        try:
            return _sample_vllm(problems, n, max_new_tokens, temperature, seed, llm_kwargs(model_path, seed, vllm))
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


def _sample_vllm(problems, n, max_new_tokens, temperature, seed, kwargs: dict[str, Any]) -> list[Sample]:
    from vllm import LLM, SamplingParams  # GPU extra only

    key = repr(sorted(kwargs.items()))
    if key not in _ENGINES:  # one engine per process: a second one would find its memory taken
        _ENGINES.clear()
        _ENGINES[key] = LLM(**kwargs)
    llm = _ENGINES[key]
    params = SamplingParams(n=n, temperature=max(temperature, 0.0), max_tokens=max_new_tokens, seed=seed)
    results = llm.chat([as_chat(p) for p in problems], params, use_tqdm=False)
    out = []
    for i, res in enumerate(results):
        for s, o in enumerate(res.outputs):
            out.append(Sample(i, s, o.text, len(res.prompt_token_ids), len(o.token_ids)))
    return out
