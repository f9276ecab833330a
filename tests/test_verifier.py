"""The verifier on hard pairs, from a thread, on hanging input; and `s2d-plan reward-check`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("math_verify")

from runners.verifier import Verifier, batch_metrics


@pytest.fixture(scope="module")
def verifier():
    v = Verifier(workers=1, soft_timeout=2.0)
    yield v
    v.close()


# (gold, completion, score, status)
HARD_PAIRS = [
    ("1/2", "so the answer is \\boxed{0.5}.", 1, "ok"),  # fraction vs decimal
    ("0.5", "We get \\boxed{\\frac{1}{2}}", 1, "ok"),  # decimal vs fraction
    ("\\frac12", "\\boxed{1/2}", 1, "ok"),  # \frac12 shorthand in the gold
    ("\\sqrt{2}", "\\boxed{\\sqrt 2}", 1, "ok"),  # a bare gold math-verify cannot parse unboxed
    ("(1, 2]", "The answer is $\\boxed{(1,2]}$.", 1, "ok"),  # interval, text around the box
    ("(1,2]", "\\boxed{[1,2]}", 0, "ok"),  # closed vs half-open interval
    ("7", "Adding them gives 3 + 4. Therefore the final answer is \\boxed{7}. Done.", 1, "ok"),
    ("7", "The final answer is 7", 1, "ok"),  # anchored, no box
    ("3", "Let me think. x = 3 so 4", 0, "no_answer"),  # last number in prose does not count
    ("3", "I do not know.", 0, "no_answer"),  # no answer at all
    ("3", "", 0, "no_answer"),
    ("\\frac{", "\\boxed{1}", 0, "bad_gold"),  # unparseable gold is never a match
    ("???", "\\boxed{???}", 0, "bad_gold"),
    ("$\\frac{1}{2}$", "0.5", 1, "ok"),  # gold in $...$, bare expression answer
    ("-6", "\\boxed{-6}", 1, "ok"),
    ("-6", "\\boxed{6}", 0, "ok"),
]


@pytest.mark.parametrize("gold,answer,score,status", HARD_PAIRS)
def test_hard_pairs(verifier, gold, answer, score, status):
    v = verifier.score(gold, answer)
    assert (v.score, v.status) == (score, status), v


def test_batch_and_metrics(verifier):
    golds = [p[0] for p in HARD_PAIRS]
    answers = [p[1] for p in HARD_PAIRS]
    verdicts = verifier.score_many(golds, answers)
    assert [v.score for v in verdicts] == [p[2] for p in HARD_PAIRS]
    m = batch_metrics(verdicts)
    assert m["verifier/bad_gold"] == pytest.approx(2 / len(HARD_PAIRS))
    assert m["verifier/parse_failures"] == pytest.approx(3 / len(HARD_PAIRS))


def test_from_threads(verifier):
    """TRL may call reward functions off the main thread: SIGALRM-based math-verify would raise there."""
    results = []

    def work():
        results.extend(verifier.score_many(["2", "1/2"], ["\\boxed{2}", "\\boxed{0.5}"]))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v.score for v in results] == [1.0] * 6


HANG = ("9^{9^{9^{9}}}", "\\boxed{9^{9^{9^{9^{9}}}}}")  # sympy tries to evaluate a tower of powers


def test_hanging_input_soft_timeout(verifier):
    t = time.monotonic()
    v = verifier.score(*HANG)
    assert v.status == "timeout" and v.score == 0
    assert time.monotonic() - t < 5
    assert verifier.score("2", "\\boxed{2}").score == 1  # the worker survives


def test_hanging_input_hard_deadline_kills_worker():
    """When the worker's own alarm cannot fire (a hang in C code), the parent kills it."""
    v = Verifier(workers=1, soft_timeout=30.0, hard_timeout=1.0)
    try:
        t = time.monotonic()
        out = v.score_many([HANG[0], "2"], [HANG[1], "\\boxed{2}"])
        assert out[0].status == "timeout" and "killed" in out[0].detail
        assert out[1].score == 1  # the restarted worker finishes the batch
        assert v.restarts == 1 and time.monotonic() - t < 15
    finally:
        v.close()


def test_overhead_per_call_is_small(verifier):
    verifier.score("1", "\\boxed{1}")
    n = 200
    t = time.perf_counter()
    verifier.score_many(["12"] * n, ["\\boxed{12}"] * n)
    per_call_ms = (time.perf_counter() - t) / n * 1000
    print(f"verifier: {per_call_ms:.3f} ms per pair")
    assert per_call_ms < 5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "s2d_plan.cli", "reward-check", *args], capture_output=True, text=True)


def test_reward_check_cli(tmp_path):
    r = _cli("--gold", "\\frac12", "--answer", "so it is \\boxed{0.5}.")
    assert r.returncode == 0, r.stderr
    assert "score    1" in r.stdout and "1/2" in r.stdout
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"gold": g, "answer": a}) for g, a, _, _ in HARD_PAIRS) + "\n")
    r = _cli("--file", str(pairs), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["score"] for x in rows] == [p[2] for p in HARD_PAIRS]
    assert all({"gold_parsed", "answer_parsed", "score"} <= set(x) for x in rows)


@pytest.mark.parametrize("args,needle", [
    ((), "needs --gold and --answer"),
    (("--gold", "1"), "needs both"),
    (("--file", "/nonexistent/pairs.jsonl"), "cannot read"),
])
def test_reward_check_bad_input(args, needle):
    r = _cli(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_reward_check_bad_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"gold": "1", "answer": "1"}\nnot json\n')
    r = _cli("--file", str(f))
    assert r.returncode == 2 and "p.jsonl:2" in r.stderr


def test_long_completions_do_not_block_the_pipe(verifier):
    """Requests bigger than the pipe buffer still flow (the parent never blocks on a write
    while a worker is busy, or the deadline could not be enforced)."""
    long = "We add. " * 12_000 + "\\boxed{5}"  # about 96 KB
    out = verifier.score_many(["5"] * 3 + ["6"], [long] * 3 + ["\\boxed{6}"])
    assert [v.score for v in out] == [1.0] * 4
