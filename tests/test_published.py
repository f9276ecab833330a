"""The published-results table: every shipped row validates, and malformed rows are refused
with the row's id in the message."""

from __future__ import annotations

import pytest
import yaml

from s2d_plan.errors import ConfigurationError
from s2d_plan.evidence.published import METHODS, load_published, markdown_table, parse_published


def _row(**over):
    row = dict(id="x-1", source="paper", citation="A paper (arXiv 0000.00000)", where="Table 1",
               student="Qwen2.5-1.5B", student_params_b=1.5, student_family="qwen2.5", student_kind="base",
               method="direct_rl", eval="math500", metric="pass@1", before=0.3, after=0.5, notes="n")
    row.update(over)
    return row


def test_shipped_rows_validate_and_are_unique():
    rows = load_published()
    assert len({r.id for r in rows}) == len(rows)
    assert len(rows) >= 30
    assert len({r.student_family for r in rows}) >= 2
    assert len({r.source for r in rows}) >= 5
    assert all(0.5 <= r.student_params_b <= 32 for r in rows)
    assert all(r.where and r.citation for r in rows)
    assert any(r.heldout for r in rows) and not all(r.heldout for r in rows)


def test_shipped_rows_cover_rl_distillation_and_both():
    methods = {r.method for r in load_published()}
    assert set(METHODS) - {"rl_then_distill"} <= methods  # no rl_then_distill result read yet
    assert methods <= set(METHODS)


def test_loader_round_trips_through_yaml():
    rows = parse_published(yaml.safe_load(yaml.safe_dump([_row(), _row(id="x-2", before=None)])))
    assert [r.id for r in rows] == ["x-1", "x-2"] and rows[1].before is None
    assert "| x-2 |" in markdown_table(rows)


@pytest.mark.parametrize("bad, says", [
    (dict(after=1.7), "fraction"),
    (dict(method="grpo"), "method must be one of"),
    (dict(student_kind="chat"), "student_kind"),
    (dict(student_params_b="7B"), "number"),
    (dict(labels=-3), "positive integer"),
    (dict(heldout="yes"), "true or false"),
    (dict(method="base"), "a base row has no before"),
    (dict(colour="red"), "unknown field"),
    (dict(notes=None), "missing field 'notes'"),
])
def test_malformed_row_is_refused_by_id(bad, says):
    with pytest.raises(ConfigurationError) as error:
        parse_published([_row(id="good"), _row(id="the-bad-one", **bad)])
    assert "the-bad-one" in str(error.value) and says in str(error.value)
    assert "good:" not in str(error.value)


def test_duplicate_id_is_refused():
    with pytest.raises(ConfigurationError, match="x-1: duplicate id"):
        parse_published([_row(), _row()])
