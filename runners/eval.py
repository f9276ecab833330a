"""Eval stage: avg@k, pass@k and greedy accuracy of a policy on each eval set.

    python -m runners.eval STAGE.json

``data.eval`` is a list of ``{name, source, problem_field?, answer_field?, size?}``. For
each set, k samples per problem at ``temperature``; metrics (step 0):

- ``eval/<name>/avg@k``: pass@1 averaged over the k samples (what the paper reports);
- ``eval/<name>/pass@k``: share of problems with at least one correct sample;
- ``eval/<name>/greedy``: one greedy sample per problem (when ``greedy`` is true);
- ``eval/<name>/parse_failures``: share of samples with no extractable answer.

Per-problem results go to ``eval_<name>.jsonl``. Params: k, max_new_tokens, temperature,
greedy, seed, batch_size, vllm (settings for ``vllm.LLM``, see runners/_sample.py).
"""

from __future__ import annotations

import json

from runners import _train
from runners._sample import sample
from runners.common import MetricWriter, StageSpec, model_path, run_main
from runners.data import load_labeled
from s2d_plan.contract import ConfigurationError


def run(spec: StageSpec, writer: MetricWriter) -> dict:
    p = spec.params
    device = _train.device_of(spec)
    from runners.verifier import shared_verifier

    verifier = shared_verifier()
    policy = model_path(spec.inputs["policy"])
    k = int(p.k)
    summary = {}
    if not spec.data.eval:
        raise ConfigurationError("eval: the stage needs data.eval, a list of {name, source, ...}")
    for es in spec.data.eval:
        name = es.name
        rows = load_labeled(es)
        problems, golds = [r["problem"] for r in rows], [r["answer"] for r in rows]
        samples = sample(policy, problems, k, int(p.max_new_tokens), float(p.temperature), int(p.seed),
                         device, int(p.batch_size), p.vllm)
        verdicts = verifier.score_many([golds[s.problem_index] for s in samples], [s.text for s in samples])
        correct = [[0.0] * k for _ in rows]
        for s, v in zip(samples, verdicts):
            correct[s.problem_index][s.sample] = v.score
        n = max(1, len(rows))
        res = {f"avg@{k}": sum(sum(c) / k for c in correct) / n,
               f"pass@{k}": sum(1.0 for c in correct if max(c) > 0) / n,
               "parse_failures": sum(v.status == "no_answer" for v in verdicts) / max(1, len(verdicts)),
               "bad_gold": sum(v.status == "bad_gold" for v in verdicts) / max(1, len(verdicts))}
        greedy = None
        if p.greedy:
            g = sample(policy, problems, 1, int(p.max_new_tokens), 0.0, int(p.seed), device, int(p.batch_size), p.vllm)
            gv = verifier.score_many(golds, [s.text for s in g])
            greedy = [v.score for v in gv]
            res["greedy"] = sum(greedy) / n
        for key, value in res.items():
            writer.log(0, f"eval/{name}/{key}", value)
        with open(spec.work_dir / f"eval_{name}.jsonl", "w", encoding="utf-8") as f:
            for i, r in enumerate(rows):
                f.write(json.dumps({"index": r["index"], "answer": r["answer"], "correct": correct[i],
                                    "greedy": greedy[i] if greedy else None}) + "\n")
        writer.artifact(f"eval_{name}", f"eval_{name}.jsonl")
        summary[name] = res
    return summary


if __name__ == "__main__":
    run_main(run)
