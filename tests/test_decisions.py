"""The decision trail under two adaptive executors on one home (issue 23 #2)."""

from __future__ import annotations

import pytest

from s2d_plan.errors import HistoryError
from s2d_plan.history import decisions as D
from s2d_plan.history.store import HistoryWriter


def test_session_ids_chosen_in_one_second_differ():
    assert len({D.new_session_id("abcdef0123456789") for _ in range(20)}) == 20


def test_a_second_executor_on_a_live_session_is_refused_before_writing(s2d_home):
    held = D.claim(s2d_home, "abcdef0123456789")
    try:
        with pytest.raises(HistoryError, match="another adaptive executor"):
            D.claim(s2d_home, "abcdef0123456789")
    finally:
        held.close()
    D.claim(s2d_home, "abcdef0123456789").close()  # free again once the first is gone


def test_session_and_seq_are_unique(s2d_home):
    first = D.record(s2d_home, "ad-x", "h", D.Decision("candidates", "first"))
    second = D.record(s2d_home, "ad-x", "h", D.Decision("round", "second"))
    assert (first.seq, second.seq) == (1, 2)
    writer = HistoryWriter(s2d_home)
    try:
        with pytest.raises(Exception):  # noqa: B017 (the store wraps DuckDB's constraint error)
            writer.append_rows("decisions", ("session", "seq", "kind"), [("ad-x", 2, "candidates")])
    finally:
        writer.close()
    assert [d.seq for d in D.trail(s2d_home, "ad-x")] == [1, 2]
