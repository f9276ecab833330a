"""`s2d-plan reward-check`: what the verifier extracts from a gold answer and a completion.

    $ s2d-plan reward-check --gold '\\frac12' --answer 'so it is \\boxed{0.5}.'
    gold     '\\frac12'  ->  1/2
    answer   'so it is \\boxed{0.5}.'  ->  1/2 | \\frac{1}{2}
    score    1  (ok)

The planner runs this as its own process (``python -m runners.reward_check``), as it
runs every runner, so the light install never imports the verifier (runners/verifier.py,
which documents the extraction policy). Exit status 2 with a message for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from s2d_plan.contract import S2DError


def _pairs(gold: str | None, answer: str | None, file: Path | None) -> list[tuple[str, str]]:
    if file is None and gold is None and answer is None:
        raise S2DError("reward-check needs --gold and --answer, or --file PAIRS.jsonl")
    pairs: list[tuple[str, str]] = []
    if gold is not None or answer is not None:
        if gold is None or answer is None:
            raise S2DError("reward-check needs both --gold and --answer")
        pairs.append((gold, answer))
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise S2DError(f"{file}: cannot read ({exc})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise S2DError(f"{file}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "gold" not in row or "answer" not in row:
                raise S2DError(f'{file}:{n}: each line must be an object with "gold" and "answer"')
            g, a = row["gold"], row["answer"]
            if isinstance(g, (int, float)) and not isinstance(g, bool):
                g = str(g)  # a numeric gold in JSON is the obvious meaning
            if isinstance(a, (int, float)) and not isinstance(a, bool):
                a = str(a)
            if not isinstance(g, str) or not isinstance(a, str):
                raise S2DError(f'{file}:{n}: "gold" and "answer" must be strings or numbers')
            pairs.append((g, a))
        if not pairs:
            raise S2DError(f"{file}: no pairs in the file")
    return pairs


def _short(text: str, width: int = 70) -> str:
    """The text as the user typed it (no doubled backslashes), on one line, cut to width."""
    one = text.replace("\n", "\\n")
    if len(one) > width:
        one = one[: width // 2 - 2] + " ... " + one[-(width // 2 - 3):]  # keep the end: the answer is there
    return f"'{one}'"


def run_reward_check(gold: str | None = None, answer: str | None = None, file: Path | None = None,
                     json_out: bool = False) -> int:
    """Print extraction and score for each pair; returns the exit status (0)."""
    pairs = _pairs(gold, answer, file)
    from runners.verifier import Verifier

    verifier = Verifier(workers=1)
    try:
        verdicts = verifier.score_many([g for g, _ in pairs], [a for _, a in pairs])
    finally:
        verifier.close()
    for (g, a), v in zip(pairs, verdicts):
        if json_out:
            print(json.dumps({"gold": g, "answer": a, "gold_parsed": v.gold_parsed, "answer_parsed": v.answer_parsed,
                              "score": int(v.score), "status": v.status, "detail": v.detail}, ensure_ascii=False))
            continue
        gold_shown = " | ".join(v.gold_parsed) or "(nothing: gold does not parse)"
        answer_shown = " | ".join(v.answer_parsed) or "(nothing extracted)"
        print(f"gold     {_short(g)}  ->  {gold_shown}")
        print(f"answer   {_short(a)}  ->  {answer_shown}")
        print(f"score    {int(v.score)}  ({v.status}{': ' + v.detail if v.detail else ''})")
        if len(pairs) > 1:
            print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2d-plan reward-check")
    parser.add_argument("--gold")
    parser.add_argument("--answer")
    parser.add_argument("--file", type=Path)
    parser.add_argument("--json", action="store_true", dest="json_out")
    args = parser.parse_args(argv)
    try:
        return run_reward_check(args.gold, args.answer, args.file, args.json_out)
    except S2DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
