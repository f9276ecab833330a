"""What one plan needs from a home, read in one pass: the calibration in force, the solve
rates probes measured for the plan's models, and the newest run of this exact plan (a
plan whose last run did not finish is resumed, not re-planned).

Probe evidence: a probe stage records its model and source exactly as its graph named
them (paths resolved against the plan), so a plan's models and labeled source are looked
up both as written and as resolved. No history, an old schema, too few prompts: no
evidence, never an error (the registry prior stands).

    >>> from s2d_plan.plan.spec import load_plan
    >>> ev = read_home(load_plan("plans/budget.yaml"), "/nonexistent")
    >>> ev.rates, ev.last_run
    ({}, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from s2d_plan.errors import HistoryError
from s2d_plan.evidence.calibration_file import Calibration, load_calibration
from s2d_plan.history.read import evidence_rows, open_reader
from s2d_plan.paths import db_path, resolve_home, snapshot_path
from s2d_plan.plan.spec import PlanSpec
from s2d_plan.predict.outcome import SolveRates, rates_from_evidence


@dataclass(frozen=True)
class HomeEvidence:
    """A home as planning sees it: values only, so everything after this is pure."""

    home: Path
    calibration: Calibration
    rates: dict[str, SolveRates]  # model name as the plan writes it -> measured solve rates
    last_run: tuple[str, str, str | None] | None  # (run_id, status, graph JSON) of the plan's newest run


def read_home(spec: PlanSpec, home: str | Path | None) -> HomeEvidence:
    """The calibration file, then the history opened once for the probes and the last run."""
    home = resolve_home(home)
    cal = load_calibration(home)
    if not home.exists() or (not db_path(home).exists() and not snapshot_path(home).exists()):
        return HomeEvidence(home, cal, {}, None)
    try:
        with open_reader(home) as con:
            return HomeEvidence(home, cal, rates_for(spec, con), _last_run(con, spec.hash()))
    except HistoryError:
        return HomeEvidence(home, cal, {}, None)


def _last_run(con: duckdb.DuckDBPyConnection, plan_hash: str) -> tuple[str, str, str | None] | None:
    try:
        row = con.execute("SELECT run_id, status, graph FROM runs WHERE plan_hash = ? "
                          "ORDER BY start_time DESC LIMIT 1", [plan_hash]).fetchone()
    except duckdb.CatalogException:
        return None
    return (row[0], row[1], row[2]) if row else None


def rates_for(spec: PlanSpec, con: duckdb.DuckDBPyConnection) -> dict[str, SolveRates]:
    """Solve rates per model name (as the plan writes it) that probes measured, on an open
    reader of the history (one connection for every lookup)."""
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
