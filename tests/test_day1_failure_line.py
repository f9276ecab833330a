"""A failed stage's one-line reason names the exception and its first line."""

from __future__ import annotations

from s2d_plan.run.procs import reason_from_log

TAIL = """loading model
Traceback (most recent call last):
  File "runners/probe.py", line 10, in <module>
    main()
  File "runners/data.py", line 40, in load
    raise FileNotFoundError(msg)
FileNotFoundError: data/prompts.jsonl: no such file; download the set
and set source: to that directory.
"""


def test_reason_names_the_exception_and_its_first_line():
    assert reason_from_log(TAIL, "x") == "FileNotFoundError: data/prompts.jsonl: no such file; download the set"


def test_reason_without_a_traceback_is_the_last_line():
    assert reason_from_log("one\ntwo\n\n", "x") == "two"
    assert reason_from_log("", "exited 1") == "exited 1"


def test_reason_is_the_runners_own_line_cut_at_its_first_line():
    tail = TAIL + ("stage probe failed: FileNotFoundError: data/prompts.jsonl: no such file; download the set\n"
                   "and set source: to that directory.\n")
    assert reason_from_log(tail, "x") == ("stage probe failed: FileNotFoundError: data/prompts.jsonl: "
                                          "no such file; download the set")
