"""The task family: multi-step two-digit arithmetic with worked solutions ending in \\boxed{}.

    >>> import random
    >>> p = make_problem(random.Random(0), difficulty=2)
    >>> p["problem"].startswith("What is") and p["answer"].lstrip("-").isdigit()
    True

``difficulty`` is the number of operations: 1 is ``a ± b`` (two-digit operands), 2 is
``a ± b ± c``, and so on. A solution works one operation per sentence, column by
column from the units (carries and borrows written out), carrying the running value:
``47 + 38: 7+8=15 4+3+1=8, so 47 + 38 = 85. The answer is \\boxed{85}.`` (A first
build without the column work, the answer in one go, left both models near 6%: with the
eval problems held out of a space of 16,200, they must learn the algorithm, not the
table, and written-out columns make it learnable at this size.) The pretraining corpus
corrupts ``CORRUPT`` of its solutions: one column of one step slips by 1..3 and the error
is carried to the final answer, so base models learn the format
well and the arithmetic imperfectly (non-trivial, imperfect base accuracy; GRPO has
signal to sharpen, a larger model less to unlearn).

Splits are disjoint as problem strings: held-out eval, labeled (Stage 1 / direct GRPO
first, then Stage 3's held-out labels), the unlabeled prompt pool, and pretraining.
"""

from __future__ import annotations

import random
import re

CORRUPT = 0.3  # share of pretraining solutions with one wrong step (carried to the answer)
_BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def make_problem(rng: random.Random, difficulty: int = 1) -> dict:
    """One problem: ``{"problem", "answer", "operands", "ops"}`` (answer is an integer string)."""
    operands = [rng.randint(10, 99) for _ in range(difficulty + 1)]
    ops = [rng.choice("+-") for _ in range(difficulty)]
    expr = str(operands[0]) + "".join(f" {o} {x}" for o, x in zip(ops, operands[1:]))
    value = operands[0]
    for o, x in zip(ops, operands[1:]):
        value = value + x if o == "+" else value - x
    return {"problem": f"What is {expr}?", "answer": str(value), "operands": operands, "ops": ops}


def _columns(p: int, q: int, add: bool, rng: random.Random | None, slip: bool) -> tuple[str, int]:
    """Column arithmetic on magnitudes (subtraction needs p >= q), units first: the work and
    its result. ``slip``: one column's result is off by 1..3 and the error is carried."""
    dp, dq = str(p)[::-1], str(q)[::-1]
    n = max(len(dp), len(dq))
    bad = rng.randrange(n) if slip else -1
    digits, work, carry = [], [], 0
    for i in range(n):
        x, y = int(dp[i]) if i < len(dp) else 0, int(dq[i]) if i < len(dq) else 0
        if add:
            v = x + y + carry
            expr = f"{x}+{y}" + ("+1" if carry else "")
        else:
            v = x - y - carry
            expr = f"{x}-{y}" + ("-1" if carry else "")
        if i == bad:  # a slip, kept to what a column can hold
            v = min(max(v + rng.choice([-1, 1]) * rng.randint(1, 3), 0 if add else -9), 19 if add else 9)
        if add:
            carry, d = divmod(v, 10)
            work.append(f"{expr}={v}")
        else:
            carry = 1 if v < 0 else 0
            d = v + 10 * carry
            work.append(f"{expr}={v}" + (f",{d}" if carry else ""))
        digits.append(d)
    if add and carry:
        digits.append(carry)
    value = int("".join(str(d) for d in reversed(digits)))
    if not add and carry:  # a slip that made p - q negative: borrow beyond the top column
        value -= 10 ** n
    return " ".join(work), value


def _step(x: int, op: str, y: int, rng: random.Random | None, slip: bool) -> tuple[str, int]:
    """``x op y`` (y >= 0, x of either sign) as magnitudes and a sign, worked by columns."""
    plus = (op == "+")
    if x >= 0 and plus:
        work, v = _columns(x, y, True, rng, slip)
    elif x >= 0:
        big, small, sign = (x, y, 1) if x >= y else (y, x, -1)
        work, v = _columns(big, small, False, rng, slip)
        v *= sign
    elif plus:  # -|x| + y
        big, small, sign = (y, -x, 1) if y >= -x else (-x, y, -1)
        work, v = _columns(big, small, False, rng, slip)
        v *= sign
    else:  # -|x| - y
        work, v = _columns(-x, y, True, rng, slip)
        v = -v
    return f"{x} {op} {y}: {work}, so {x} {op} {y} = {v}.", v


def solution(row: dict, rng: random.Random | None = None, corrupt: float = 0.0) -> str:
    """The worked solution, one operation per sentence, each worked column by column (units
    first, carries and borrows written out). With probability ``corrupt`` one column of one
    step slips by 1..3 and the error is carried to the final answer."""
    operands, ops = row["operands"], row["ops"]
    bad_step = rng.randrange(len(ops)) if rng is not None and rng.random() < corrupt else -1
    value, steps = operands[0], []
    for i, (o, x) in enumerate(zip(ops, operands[1:])):
        text, value = _step(value, o, x, rng, i == bad_step)
        steps.append(text)
    return " ".join(steps) + f" The answer is \\boxed{{{value}}}."


def boxed_answer(text: str) -> str | None:
    found = _BOXED.findall(text)
    return found[-1] if found else None


def splits(seed: int, difficulty: int, n_eval: int, n_labeled: int, n_prompts: int,
           n_pretrain: int) -> dict[str, list[dict]]:
    """Disjoint splits (by problem string), deterministic in (seed, difficulty)."""
    rng = random.Random(f"tinyworld/{seed}/{difficulty}")
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    space = 2 * 90 ** 2 if difficulty == 1 else float("inf")
    for name, n in (("eval", n_eval), ("labeled", n_labeled), ("prompts", n_prompts), ("pretrain", n_pretrain)):
        if name == "pretrain":
            n = int(min(n, space - len(seen)))
        rows: list[dict] = []
        while len(rows) < n:
            row = make_problem(rng, difficulty)
            if row["problem"] not in seen:
                seen.add(row["problem"])
                rows.append(row)
        out[name] = rows
    return out
