"""The read side of the history: read-only connections, user SQL, and what the planner
reads back (probe evidence, finished runs).

A reader never takes a lock the run needs: while an executor holds the main file it
reads the executor's published copies (``s2d_plan.history.snapshots``); after a clean
exit the snapshot equals the main file and is read instead of it.

    >>> load_evidence("/nonexistent", "Qwen/Qwen3-8B")
    []
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb

from s2d_plan.errors import HistoryError
from s2d_plan.history import snapshots as _snapshots
from s2d_plan.history.store import CLEAN_MARKER, READ_STATEMENTS, _WRITERS, _is_lock_error, connect
from s2d_plan.paths import db_path, resolve_home, snapshot_path


@contextmanager
def open_reader(home: str | Path | None = None, timeout_s: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the history (the main file, or the executor's snapshot
    while a run holds the main file). Raises HistoryError when there is no history.

        with open_reader("/path/to/.s2d") as con:
            con.sql("SELECT count(*) FROM runs").fetchall()
    """
    home = resolve_home(home)
    path, snap = db_path(home), snapshot_path(home)
    own = _WRITERS.get(path)
    if own is not None:  # same process as the executor: share its connection
        cursor = own.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
        return
    if not path.exists() and not snap.exists():
        raise HistoryError(f"no history at {path} (run `s2d-plan execute` first, or pass --home)")
    con = _open_readonly(path, snap, (home / CLEAN_MARKER).exists(), timeout_s)
    try:
        yield con
    finally:
        con.close()


def _open_readonly(path: Path, snap: Path, clean: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    home = path.parent
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        if clean and snap.exists():  # the snapshot is the whole history: leave the main file alone
            try:
                return connect(snap, read_only=True)
            except duckdb.Error as exc:
                last = exc
        elif path.exists():
            try:
                return connect(path, read_only=True)
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise HistoryError(f"cannot read the history {path}: {exc}") from None
                last = exc
                con = _snapshots.open_composite(home)  # an executor holds it: read its copies
                if con is not None:
                    return con
        if time.monotonic() > deadline:
            raise HistoryError(f"the history is busy and no snapshot is available yet: {last}")
        time.sleep(0.1)
        clean = (home / CLEAN_MARKER).exists()


# -- what the allocator reads ----------------------------------------------------------
def load_evidence(home: str | Path | None, model: str, source: str | None = None) -> list[tuple[int, int]]:
    """Per-prompt (samples, correct) that probes measured for ``model`` (on ``source``
    if given), newest measurement per prompt; [] when there is no history.

        >>> load_evidence("/nonexistent", "Qwen/Qwen3-8B")
        []
    """
    home = resolve_home(home)
    if not db_path(home).exists() and not snapshot_path(home).exists():
        return []
    sql = """SELECT samples, correct FROM evidence
             WHERE model = ? AND (CAST(? AS VARCHAR) IS NULL OR source = ?)
             QUALIFY row_number() OVER (PARTITION BY model, source, prompt_index
                                        ORDER BY time DESC) = 1
             ORDER BY source, prompt_index"""
    with open_reader(home) as con:
        try:
            rows = con.execute(sql, [model, source, source]).fetchall()
        except duckdb.CatalogException:  # a history older than the evidence table
            return []
    return [(int(s), int(c)) for s, c in rows]


# -- the CLI: history, runs, show ------------------------------------------------------
def query(sql: str, home: str | Path | None = None, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run user SQL read-only; return (column names, rows). Errors become HistoryError.

        cols, rows = query("SELECT run_id, status FROM runs", home)
    """
    if not sql.strip():
        raise HistoryError("empty SQL")
    with open_reader(home) as con:
        try:
            kinds = [st.type.name for st in con.extract_statements(sql)]
            refused = [k for k in kinds if k not in READ_STATEMENTS]
            if refused:
                raise HistoryError(f"the history is read-only: {refused[0]} statements are refused; "
                                   "nothing was changed")
            cur = con.execute(sql, params) if params else con.execute(sql)
            if cur.description is None:
                return [], []
            cols = [d[0] for d in cur.description]
            return cols, cur.fetchall()
        except duckdb.Error as exc:
            message = str(exc)
            if "read-only" in message:
                raise HistoryError(f"the history is read-only here; nothing was changed ({message})") from None
            raise HistoryError(message) from None


# -- what `runs` and `show` read -------------------------------------------------------
RUNS_SQL = """
        SELECT r.run_id, r.plan, r.status, strftime(r.start_time, '%Y-%m-%d %H:%M:%S') AS started,
               round(epoch(coalesce(r.end_time, now()::TIMESTAMP) - r.start_time), 1) AS seconds,
               count(s.stage_id) AS stages,
               count(*) FILTER (s.status IN ('FINISHED', 'CACHED')) AS done,
               count(*) FILTER (s.status = 'CACHED') AS cached,
               count(*) FILTER (s.status IN ('FAILED', 'KILLED')) AS failed,
               round(r.est_gpu_hours, 3) AS est_gpu_h, round(sum(s.gpu_hours), 4) AS gpu_h
        FROM runs r LEFT JOIN stages s USING (run_id)
        GROUP BY ALL ORDER BY started DESC, r.run_id DESC"""


def list_runs(home: str | Path | None = None) -> tuple[list[str], list[tuple]]:
    """Every run, newest first, with stage counts and GPU-hours; ([], []) without a history."""
    home = resolve_home(home)
    if not db_path(home).exists() and not snapshot_path(home).exists():
        return [], []
    return query(RUNS_SQL, home)


@dataclass(frozen=True)
class RunView:
    run_id: str
    plan: str
    status: str
    start: Any
    end: Any
    error: str | None
    columns: list[str]  # of `stages`, one row per stage
    stages: list[tuple]
    errors: list[tuple]  # (stage_id, status, error)


def find_run(run: str, home: str | Path | None = None) -> str:
    """The run id a unique prefix names."""
    _, ids = query("SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id", home, [run])
    if not ids:
        raise HistoryError(f"no run matches {run!r} (see `s2d-plan runs`)")
    if len(ids) > 1:
        raise HistoryError(f"{run!r} matches {len(ids)} runs: " + ", ".join(r[0] for r in ids[:5]))
    return ids[0][0]


def show_run(run: str, home: str | Path | None = None) -> RunView:
    """One run: its stages, statuses, estimated vs measured GPU-hours and final metrics
    (for a CACHED stage, those of the attempt that produced its output)."""
    run_id = find_run(run, home)
    _, head = query("SELECT plan, status, start_time, end_time, error FROM runs WHERE run_id = ?", home, [run_id])
    cols, rows = query(SHOW_SQL, home, [run_id])
    _, errors = query("SELECT stage_id, status, error FROM stages WHERE run_id = ? AND error IS NOT NULL "
                      "ORDER BY position", home, [run_id])
    return RunView(run_id, *head[0], cols, rows, errors)


SHOW_SQL = """
        WITH s AS (SELECT * FROM stages WHERE run_id = $1),
        ran AS (
            SELECT s.stage_id, m.key, arg_max_null(m.value, m.step) AS value
            FROM s JOIN metrics m ON m.run_id = s.run_id AND m.stage_id = s.stage_id AND m.attempt = s.attempt
            WHERE s.status NOT IN ('CACHED', 'SKIPPED', 'PENDING') GROUP BY ALL),
        reused AS (
            SELECT s.stage_id, m.key, arg_max_null(m.value, m.step) AS value
            FROM s JOIN metrics_latest m ON m.stage_id = s.stage_id AND m.cache_key = s.cache_key
            WHERE s.status = 'CACHED' GROUP BY ALL),
        final AS (
            SELECT stage_id, string_agg(key || '=' || coalesce(printf('%.4g', value), 'null'), ' ' ORDER BY key) AS metrics
            FROM (SELECT * FROM ran UNION ALL SELECT * FROM reused) GROUP BY stage_id)
        SELECT s.stage_id AS stage, s.kind, s.status, s.attempt,
               round(s.est_gpu_hours, 4) AS est_gpu_h, round(s.gpu_hours, 4) AS gpu_h,
               round(s.wall_s, 1) AS seconds, f.metrics AS final_metrics
        FROM s LEFT JOIN final f USING (stage_id)
        ORDER BY s.position, s.stage_id"""
