"""tinyworld's task family: deterministic, verifiable, disjoint splits (no model is built here;
`python -m tinyworld.build OUT --fast` is exercised by benchmarks.tinyworld --quick)."""

from __future__ import annotations

import random

import pytest

from tinyworld.task import boxed_answer, make_problem, solution, splits


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_worked_solutions_reach_the_answer_and_slips_are_carried(difficulty):
    rng = random.Random(difficulty)
    wrong = 0
    for _ in range(2000):
        row = make_problem(rng, difficulty)
        assert len(row["operands"]) == difficulty + 1
        assert boxed_answer(solution(row)) == row["answer"]
        slipped = solution(row, rng, corrupt=1.0)
        assert boxed_answer(slipped) is not None
        wrong += boxed_answer(slipped) != row["answer"]
    assert wrong > 1800  # a slip almost always changes the final answer


def test_splits_are_deterministic_and_disjoint():
    a = splits(0, 1, n_eval=200, n_labeled=100, n_prompts=300, n_pretrain=5000)
    assert a == splits(0, 1, n_eval=200, n_labeled=100, n_prompts=300, n_pretrain=5000)
    assert a != splits(1, 1, n_eval=200, n_labeled=100, n_prompts=300, n_pretrain=5000)
    seen = [{r["problem"] for r in rows} for rows in a.values()]
    assert sum(map(len, seen)) == len(set().union(*seen))  # no problem in two splits
    # difficulty 1 has 16,200 problems: pretraining gets what the other splits leave
    full = splits(0, 1, n_eval=500, n_labeled=512, n_prompts=4096, n_pretrain=20000)
    assert len(full["pretrain"]) == 2 * 90 ** 2 - 500 - 512 - 4096
