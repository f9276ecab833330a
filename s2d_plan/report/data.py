"""What a report shows, read from the history and nothing else.

One ``RunData`` per run: its row in ``runs``, the stage graph it executed (the plan's
prediction, the chosen pipeline, the allocator's alternatives in ``graph.meta``), its
stages with estimated and measured GPU-hours, every metric curve, and its allocator
``trials``. A stage reused from the cache shows the metrics of the attempt that made its
output (matched by cache key, as ``s2d-plan show`` does). ``Residual`` rows compare the
calibration in force with each calibrated run's measured accuracy.

Every read goes through ``s2d_plan.history.read`` (the snapshot while a run holds the
file), so a report of a run in progress never takes a lock the executor needs.

    >>> load_runs([], "/nonexistent")
    Traceback (most recent call last):
    ...
    s2d_plan.errors.HistoryError: no history at /nonexistent/history.duckdb (run `s2d-plan execute` first, or pass --home)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_plan.errors import GraphError, HistoryError
from s2d_plan.graph import StageGraph, parse_graph
from s2d_plan.history.read import find_run, open_reader

PEAK_MEM_KEY = "sys/peak_mem_gb"  # what runners log at their end (runners.common)

_STAGES_SQL = """SELECT stage_id, kind, status, attempt, cache_key, est_gpu_hours, gpu_hours, wall_s, policy,
                        teacher, needs, position, error
                 FROM stages WHERE run_id = ? ORDER BY position, stage_id"""
# Newest attempt per step, through the cache key: a CACHED stage shows the run that made
# its output, a resumed stage its steps from every attempt.
_METRICS_SQL = """SELECT s.stage_id, m.key, m.step, m.value
                  FROM stages s JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
                  WHERE s.run_id = ? AND s.status NOT IN ('PENDING', 'SKIPPED')
                  ORDER BY s.stage_id, m.key, m.step, m.time"""
_TRIALS_SQL = """SELECT number, structure, value, gpu_hours, feasible FROM trials WHERE run_id = ?
                 ORDER BY number"""


@dataclass(frozen=True)
class StageRow:
    stage_id: str
    kind: str
    status: str
    attempt: int | None
    est_gpu_hours: float | None
    gpu_hours: float | None
    wall_s: float | None
    policy: str | None
    teacher: str | None
    needs: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class Trial:
    number: int
    structure: str
    value: float | None
    gpu_hours: float | None
    feasible: bool | None


@dataclass
class RunData:
    run_id: str
    plan: str
    status: str
    start: Any
    end: Any
    graph: StageGraph | None  # None: a graph this version cannot read (the raw dict is kept)
    raw_graph: dict[str, Any]
    stages: list[StageRow]
    curves: dict[tuple[str, str], list[tuple[int, float | None]]]  # (stage, key) -> [(step, value)]
    trials: list[Trial] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, Any]:
        return self.raw_graph.get("meta") or {}

    @property
    def label(self) -> str:
        """A short name: a benchmark arm, else the plan, with the run id's time."""
        name = self.meta.get("arm") or self.plan
        seed = self.meta.get("seed")
        return f"{name}" + (f" s{seed}" if seed is not None else "") + f" ({self.run_id[-11:]})"

    @property
    def objective(self) -> str | None:
        return (self.raw_graph.get("predicted") or {}).get("eval") or self.meta.get("objective")

    def last(self, stage_id: str, key: str) -> float | None:
        points = [v for _, v in self.curves.get((stage_id, key), []) if v is not None]
        return points[-1] if points else None

    def measured_objective(self) -> tuple[str, float] | None:
        """(metric, value) of the objective's avg@k from the last stage that measured it."""
        objective = self.objective
        found = None
        for st in self.stages:
            for (sid, key), points in self.curves.items():
                if sid == st.stage_id and objective and key.startswith(f"eval/{objective}/avg@") and points:
                    found = (key, points[-1][1])
        return found if found and found[1] is not None else None

    def estimate(self, stage_id: str) -> dict[str, Any]:
        for st in self.raw_graph.get("stages") or []:
            if st.get("id") == stage_id:
                return st.get("estimated") or {}
        return {}


def load_runs(runs: list[str], home: str | Path | None = None, default_latest: bool = True) -> list[RunData]:
    """The named runs (unique prefixes), or the newest run when none is named."""
    with open_reader(home) as con:
        ids = [con.execute("SELECT run_id FROM runs ORDER BY start_time DESC, run_id DESC LIMIT 1").fetchall()]
    if runs:
        run_ids = [find_run(r, home) for r in runs]
    elif ids[0]:
        run_ids = [ids[0][0][0]]
    else:
        raise HistoryError("the history has no runs yet (run `s2d-plan execute` first)")
    return [load_run(run_id, home) for run_id in dict.fromkeys(run_ids)]


def load_run(run_id: str, home: str | Path | None = None) -> RunData:
    with open_reader(home) as con:
        head = con.execute("SELECT plan, status, start_time, end_time, graph FROM runs WHERE run_id = ?",
                           [run_id]).fetchall()
        if not head:
            raise HistoryError(f"no run {run_id!r} in the history")
        stages = con.execute(_STAGES_SQL, [run_id]).fetchall()
        metrics = con.execute(_METRICS_SQL, [run_id]).fetchall()
        try:
            trials = con.execute(_TRIALS_SQL, [run_id]).fetchall()
        except Exception:  # a history older than the trials table
            trials = []
    plan, status, start, end, text = head[0]
    raw = _json(text)
    graph = None
    try:
        graph = parse_graph(raw, source=f"run {run_id}") if raw else None
    except GraphError:
        pass
    curves: dict[tuple[str, str], list[tuple[int, float | None]]] = {}
    for sid, key, step, value in metrics:
        pts = curves.setdefault((sid, key), [])
        if pts and pts[-1][0] == step:  # one value per step: the newest
            pts[-1] = (int(step), value)
        else:
            pts.append((int(step), value))
    rows = [StageRow(sid, kind, st, att, est, gh, wall, pol, tea, tuple(needs or ()), err)
            for sid, kind, st, att, _key, est, gh, wall, pol, tea, needs, _pos, err in stages]
    return RunData(run_id, plan, status, start, end, graph, raw, rows, curves,
                   [Trial(int(n), s, v, g, f) for n, s, v, g, f in trials])


def _json(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class Residual:
    run_id: str
    structure: str
    metric: str
    measured: float
    shipped: float  # predicted with the shipped constants
    calibrated: float  # predicted with the constants of <home>/calibration.json


def calibration_residuals(home: str | Path | None = None) -> tuple[dict[str, Any] | None, list[Residual]]:
    """(the calibration's fit summary, a residual per calibrated run); (None, []) when the
    home holds no calibration."""
    from s2d_plan.evidence.calibration_file import Calibration, load_calibration
    from s2d_plan.evidence.from_runs import observations
    from s2d_plan.paths import resolve_home

    home = resolve_home(home)
    cal = load_calibration(home)
    if not cal.raw:
        return None, []
    try:
        obs, _ = observations(home)
    except HistoryError:
        return cal.fit, []
    shipped = Calibration().outcome
    return cal.fit, [Residual(o.run_id, o.label, o.metric, o.measured, o.predicted(shipped),
                              o.predicted(cal.outcome)) for o in obs]
