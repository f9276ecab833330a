"""The read side of the history: read-only connections, user SQL, and what the planner
reads back (probe evidence, finished runs).

A reader never takes a lock the run needs: while an executor holds the main file it
reads the executor's published copies (``s2d_plan.history.snapshots``); after a clean
exit the snapshot equals the main file and is read instead of it.

    >>> load_evidence("/nonexistent", "Qwen/Qwen3-8B")
    []
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from s2d_plan.errors import HistoryError
from s2d_plan.history import files as _files, snapshots as _snapshots
from s2d_plan.paths import db_path, resolve_home, snapshot_path

# Statement types `history` runs. Everything else (INSERT, COPY, EXPORT, SET, INSTALL,
# LOAD, ATTACH, ...) is refused before it reaches DuckDB, and EXPLAIN only of a SELECT.
# The connection is locked as well (files.LOCKED): two locks, either one enough.
READ_STATEMENTS = frozenset({"SELECT", "PRAGMA", "CALL", "EXPLAIN"})
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\([^)]*\)\s*)?(.*)$", re.IGNORECASE | re.DOTALL)
STALE_AFTER_S = 15.0  # a snapshot this much older than the main file's last write is called stale


class HistoryNotice(UserWarning):
    """Something a reader of the history should know (a stale snapshot, a missing main
    file read from its snapshot); the CLI prints it as ``warning: ...`` on stderr."""


def _notice(message: str) -> None:
    warnings.warn(HistoryNotice(message), stacklevel=3)


@contextmanager
def open_reader(home: str | Path | None = None, timeout_s: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the history that can neither write, fetch nor install
    (the main file, or the executor's snapshot while a run holds the main file). Raises
    HistoryError when there is no history. It never shares a writer's connection, in
    this process or another: while a writer holds the file it reads the published copies.

        with open_reader("/path/to/.s2d") as con:
            con.sql("SELECT count(*) FROM runs").fetchall()
    """
    home = resolve_home(home)
    path, snap = db_path(home), snapshot_path(home)
    if not path.exists() and not snap.exists():
        raise HistoryError(f"no history at {path} (run `s2d-plan execute` first, or pass --home)")
    con = _open_readonly(home, timeout_s)
    try:
        yield con
    finally:
        con.close()


def _open_readonly(home: Path, timeout_s: float) -> duckdb.DuckDBPyConnection:
    path, snap = db_path(home), snapshot_path(home)
    deadline = time.monotonic() + timeout_s
    while True:
        if not path.exists():
            return _read_orphan_snapshot(path, snap)
        if _files.snapshot_is_current(home):  # the snapshot is the whole history: leave the main file alone
            try:
                return _files.connect_locked(snap)
            except duckdb.Error:
                pass  # an empty or damaged snapshot: the main file is intact, read that
        try:
            return _files.connect_locked(path)
        except duckdb.Error as exc:
            if not (_files.is_lock_error(exc) or _files.is_held_here(exc)):
                raise _files.damaged(path, exc) from None
            held = exc
        con = _snapshots.open_composite(home)  # an executor holds it: read its copies
        if con is not None:
            _warn_if_stale(home)
            return con
        if time.monotonic() > deadline:
            raise HistoryError(f"the history is held by {_files.lock_holder(held)} and no readable "
                               "snapshot is published yet; retry in a moment")
        time.sleep(0.1)


def _read_orphan_snapshot(path: Path, snap: Path) -> duckdb.DuckDBPyConnection:
    try:
        con = _files.connect_locked(snap)
    except duckdb.Error as exc:
        raise HistoryError(f"the history {path} is missing and its snapshot {snap} cannot be read "
                           f"({str(exc).splitlines()[0]})") from None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.stat().st_mtime))
    _notice(f"{path} is missing; reading its snapshot (written {when}). The next `s2d-plan execute` "
            "or `s2d-plan history --check` restores the history from it")
    return con


def _warn_if_stale(home: Path) -> None:
    copies = [p.stat().st_mtime for p in (snapshot_path(home), _snapshots.live_path(home)) if p.exists()]
    behind = _files.last_write(db_path(home)) - max(copies, default=0.0)
    if behind > STALE_AFTER_S:
        _notice(f"the snapshot readers see is {behind:.0f} s older than the history's last write "
                "(the executor could not publish it: disk full?); rows may be missing")


# -- what the allocator reads ----------------------------------------------------------
_EVIDENCE_SQL = """SELECT samples, correct FROM evidence
                   WHERE model = ? AND (CAST(? AS VARCHAR) IS NULL OR source = ?)
                   QUALIFY row_number() OVER (PARTITION BY model, source, prompt_index
                                              ORDER BY time DESC) = 1
                   ORDER BY source, prompt_index"""


def load_evidence(home: str | Path | None, model: str, source: str | None = None) -> list[tuple[int, int]]:
    """Per-prompt (samples, correct) that probes measured for ``model`` (on ``source``
    if given), newest measurement per prompt; [] when there is no history.

        >>> load_evidence("/nonexistent", "Qwen/Qwen3-8B")
        []
    """
    home = resolve_home(home)
    if not db_path(home).exists() and not snapshot_path(home).exists():
        return []
    with open_reader(home) as con:
        return evidence_rows(con, model, source)


def evidence_rows(con: duckdb.DuckDBPyConnection, model: str, source: str | None = None) -> list[tuple[int, int]]:
    """``load_evidence`` on an open reader."""
    try:
        rows = con.execute(_EVIDENCE_SQL, [model, source, source]).fetchall()
    except duckdb.CatalogException:  # a history older than the evidence table
        return []
    return [(int(s), int(c)) for s, c in rows]


# -- the CLI: history, runs, show ------------------------------------------------------
def query(sql: str, home: str | Path | None = None, params: Sequence[Any] | None = None,
          max_rows: int | None = None) -> tuple[list[str], list[tuple]]:
    """Run user SQL read-only; return (column names, rows). Errors become HistoryError.
    With ``max_rows`` (> 0) rows are streamed and at most ``max_rows + 1`` are fetched, so
    a caller sees that more were cut without the whole result in memory.

        cols, rows = query("SELECT run_id, status FROM runs", home)
    """
    if not sql.strip():
        raise HistoryError("empty SQL")
    with open_reader(home) as con:
        try:
            refused = refused_statement(con, sql)
            if refused:
                raise HistoryError(f"the history is read-only: {refused} statements are refused; "
                                   "nothing was changed (export with --csv/--json or --out FILE)")
            cur = con.execute(sql, params) if params else con.execute(sql)
            if cur.description is None:
                return [], []
            return [d[0] for d in cur.description], _fetch(cur, max_rows)
        except duckdb.Error as exc:
            raise _query_error(exc, home) from None


def _fetch(cur: duckdb.DuckDBPyConnection, max_rows: int | None, chunk: int = 10_000) -> list[tuple]:
    """Every row, or at most ``max_rows + 1`` fetched in chunks (streaming)."""
    if not max_rows:
        rows: list[tuple] = []
        while batch := cur.fetchmany(chunk):
            rows += batch
        return rows
    rows = []
    while len(rows) <= max_rows and (batch := cur.fetchmany(min(chunk, max_rows + 1 - len(rows)))):
        rows += batch
    return rows


def _query_error(exc: duckdb.Error, home: str | Path | None) -> HistoryError:
    message = str(exc)
    if "read-only" in message:
        return HistoryError(f"the history is read-only here; nothing was changed ({message})")
    if "configuration has been locked" in message:
        return HistoryError("the history is read-only: its settings are locked; nothing was changed "
                            f"({message.splitlines()[0]})")
    if isinstance(exc, duckdb.PermissionException):  # the locked connection said no
        return HistoryError("the history reads only its own tables: files, the network and extensions "
                            f"are off ({message.splitlines()[0]})")
    if isinstance(exc, duckdb.IOException):  # a block that cannot be read
        home = resolve_home(home)
        hit = next((p for p in (snapshot_path(home), db_path(home)) if str(p) in message), db_path(home))
        return _files.damaged(hit, exc)
    return HistoryError(message)


def refused_statement(con: duckdb.DuckDBPyConnection, sql: str) -> str | None:
    """The first statement type of ``sql`` that ``history`` refuses, or None."""
    for st in con.extract_statements(sql):
        kind = st.type.name
        if kind == "EXPLAIN":
            inner = _EXPLAIN.match(st.query)
            try:
                kinds = [s.type.name for s in con.extract_statements(inner.group(1))] if inner else []
            except duckdb.Error:
                kinds = []
            if kinds != ["SELECT"]:
                return "EXPLAIN " + ("/".join(kinds) or "(of something other than a query)")
        elif kind not in READ_STATEMENTS:
            return kind
    return None


def write_export(target: str | Path, text: str, home: str | Path | None = None) -> Path:
    """Write ``text`` to ``target`` atomically (a temporary file beside it, then a
    rename); refuse any path inside the home (the history's own files, metric
    streams, specs, COMPLETE markers, checkpoints), symlinks resolved.

        write_export("/tmp/runs.csv", "run_id\\n", "/nonexistent")
    """
    target = Path(target).expanduser().absolute()
    home = resolve_home(home)
    if target.is_dir():
        raise HistoryError(f"--out {target} is a directory; name a file")
    resolved, root = target.resolve(), home.resolve()
    if resolved == root or root in resolved.parents:  # symlinks resolved: no way into the home
        raise HistoryError(f"--out {target} is inside the home {home} (the history's own files, stage "
                           "outputs, checkpoints); nothing was written: name a file outside it")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HistoryError(f"cannot write {target}: {exc.strerror}") from None
    return target


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
            SELECT stage_id, string_agg(key || '=' || coalesce(printf('%.4g', value), 'null'), ' '
                              -- what a reader looks for first: evals, then rewards, then the rest
                              ORDER BY NOT starts_with(key, 'eval/'), NOT contains(key, 'reward'), key) AS metrics
            FROM (SELECT * FROM ran UNION ALL SELECT * FROM reused) GROUP BY stage_id)
        SELECT s.stage_id AS stage, s.kind, s.status, s.attempt,
               round(s.est_gpu_hours, 4) AS est_gpu_h, round(s.gpu_hours, 4) AS gpu_h,
               round(s.wall_s, 1) AS seconds, f.metrics AS final_metrics
        FROM s LEFT JOIN final f USING (stage_id)
        ORDER BY s.position, s.stage_id"""
