"""Probe evidence: what ``s2d-plan probe`` measured, as each model's solve-rate Beta.

A probe stage records its model and source exactly as its graph named them (paths
resolved against the plan), so a plan's models and labeled source are looked up both
as written and as resolved. No history, an old schema, too few prompts: no evidence,
never an error (the registry prior stands).

    >>> from s2d_plan.plan.spec import load_plan
    >>> load_rates(load_plan("plans/budget.yaml"), "/nonexistent")
    {}
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from s2d_plan.errors import HistoryError
from s2d_plan.history.read import evidence_rows, open_reader
from s2d_plan.plan.spec import PlanSpec
from s2d_plan.predict.outcome import SolveRates, rates_from_evidence


def load_rates(spec: PlanSpec, home: str | Path) -> dict[str, SolveRates]:
    """Solve rates per model name (as the plan writes it) that probes in ``home`` measured."""
    home = Path(home)
    if not home.exists():
        return {}
    try:
        with open_reader(home) as con:
            return rates_for(spec, con)
    except HistoryError:
        return {}


def rates_for(spec: PlanSpec, con: duckdb.DuckDBPyConnection) -> dict[str, SolveRates]:
    """The same, on an open reader of the history (one connection for every lookup)."""
    source = spec.data.labeled.source
    sources = list(dict.fromkeys([spec.resolve_path(source), source]))
    out: dict[str, SolveRates] = {}
    for model in [spec.student.model] + [t.model for t in spec.teachers]:
        for name in dict.fromkeys([spec.resolve_path(model), model]):
            rates = next(filter(None, (_rates(con, name, s) for s in sources)), None)
            if rates is not None:
                out[model] = rates
                break
    return out


def _rates(con: duckdb.DuckDBPyConnection, model: str, source: str) -> SolveRates | None:
    rows = evidence_rows(con, model, source)
    return rates_from_evidence(rows) if rows else None
