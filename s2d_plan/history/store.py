"""The run history: one DuckDB file, written only by the executor, read with plain SQL.

Where it lives: ``<home>/history.duckdb`` (home = ``--home`` / ``S2D_HOME`` / ``./.s2d``,
see ``s2d_plan.paths``). Tables (the public contract, in the manual): ``runs``, ``stages``,
``metrics``, ``artifacts``, ``evidence``, ``trials``, plus the view ``metrics_latest``
(newest attempt per stage, key and step, so a resumed stage has one clean curve) and
``schema_version`` (numbered migrations, ``s2d_plan.history.migrations``).

Readers never block the run. DuckDB lets one process write a file and refuses a
read-only open while that writer holds it, so the executor keeps the main file open for
its whole run and publishes copies that readers open instead (``s2d_plan.history.snapshots``):
the whole history once when the run starts (``history.snapshot.duckdb``), then every
couple of seconds and at each stage boundary only the current run's rows
(``history.live.duckdb``, cheap however large the history grows). A reader opens the
main file read-only when no executor holds it, else base + live, so results are at
most a few seconds stale and a query never takes a lock the run needs. After a clean
exit the snapshot equals the main file and readers use it, so a query cannot delay the
next ``execute`` either. ``history`` runs queries only, on a connection that cannot
write, fetch or install anything (``s2d_plan.history.read``).

A write that fails (a full disk, an I/O error) makes the writer *broken*: it raises
``HistoryWriteError`` once, takes no further writes, and never marks the snapshot clean.
Metric lines and the offset saying how far into their file they reach commit together,
so whatever did not commit is still on disk for the next run to ingest.

The writer's verbs (``start_run``, ``add_stages``, ``start_stage``, ``finish_stage`` ...)
are the only SQL the executor causes; the read side is ``s2d_plan.history.read``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from s2d_plan.errors import HistoryError
from s2d_plan.history import files as _files, snapshots as _snapshots
from s2d_plan.history.files import CLEAN_MARKER
from s2d_plan.history.migrations import LATEST, migrate
from s2d_plan.paths import db_path

__all__ = ["CLEAN_MARKER", "HistoryWriteError", "HistoryWriter", "connect", "utcnow"]
SNAPSHOT_EVERY_S = 2.0  # publish at most this often (more rarely when a copy is slow)



class HistoryWriteError(HistoryError):
    """The history could not take a write (disk full, I/O error); nothing half-written
    was committed. ``disk_full`` says which; ``path`` is the history file."""

    def __init__(self, path: Path, cause: BaseException):
        self.path, self.cause = path, cause
        self.disk_full = _files.is_disk_full(cause)
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        what = "disk full" if self.disk_full else "history write failed"
        super().__init__(f"{what} at {path}: {first}")


# The metric lines among the raw lines in _metric_lines: what is inserted, and counted.
# One row per (step, key), the last line's: TRL logs ``epoch`` twice at the last step.
_METRIC_ROWS = """
FROM (SELECT rowid AS n, from_json(line, '{"step": "BIGINT", "key": "VARCHAR", "value": "DOUBLE", "time": "DOUBLE"}') AS m
      FROM _metric_lines WHERE json_valid(line))
WHERE m.key IS NOT NULL AND m.step IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY m.step, m.key ORDER BY n DESC) = 1"""
# A later batch's (step, key) replaces the row an earlier batch wrote.
_DROP_REPEATED = """
DELETE FROM metrics WHERE run_id = $1 AND stage_id = $2 AND attempt = $3
AND (step, key) IN (SELECT m.step, m.key""" + _METRIC_ROWS + ")"
_INSERT_METRICS = """
INSERT INTO metrics
SELECT $1, $2, $3, m.step, m.key, CASE WHEN isfinite(m.value) THEN m.value END,
       coalesce(make_timestamp(CAST(m.time * 1000000 AS BIGINT)), now()::TIMESTAMP), $4""" + _METRIC_ROWS


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """The writer's connection (no progress bar: it would draw over the live display), or
    with ``read_only`` a locked reader (``files.connect_locked``)."""
    if read_only:
        return _files.connect_locked(path)
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")
    return con


def _is_write_failure(exc: BaseException) -> bool:
    """An error of the storage (disk full, I/O, a database DuckDB invalidated after one),
    as opposed to a wrong statement."""
    return isinstance(exc, (duckdb.IOException, duckdb.FatalException, OSError)) or \
        _files.is_disk_full(exc) or "invalidated" in str(exc).lower()


ARTIFACT_COLUMNS = ("run_id", "stage_id", "name", "uri", "sha256", "bytes", "attempt", "cache_key", "time")


def utcnow() -> dt.datetime:
    """Naive UTC: every TIMESTAMP column of the history is UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class HistoryWriter:
    """The single writer: opened by the executor for a whole run.

    Small updates (a stage starts, ends) commit at once; metrics go in batches of raw
    JSON lines through an appender and one INSERT ... SELECT per flush (DuckDB parses
    the lines: ~3x faster than json.loads in Python). Committed rows survive kill -9.

        writer = HistoryWriter(Path(".s2d"))
        writer.append_metrics("run", "stage", 1, "key", ['{"step": 0, "key": "loss", "value": 1.0}'])
        writer.close()
    """

    def __init__(self, home: Path, lock_timeout_s: float = 30.0):
        self.home = home
        self.path = db_path(home)
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"cannot create the home directory {home}: {exc.strerror}") from None
        # lines for the executor to show: what was restored or cleaned at start-up
        self.notes: list[str] = [n for n in [_files.restore_from_snapshot(home, _snapshots.INFO_TABLE)] if n]
        self.con = _files.open_writable(self.path, lock_timeout_s, connect)
        try:
            version = migrate(self.con)
            self.con.execute("SELECT count(*) FROM runs JOIN stages USING (run_id)").fetchall()  # reads its blocks
            self.con.execute("CREATE TEMP TABLE _metric_lines (line VARCHAR)")
            self._appender = self.con.appender("_metric_lines")
            self._catalog = self.con.execute("SELECT current_database()").fetchall()[0][0]
        except duckdb.Error as exc:
            self.con.close()
            raise _files.damaged(self.path, exc) from None
        if version > LATEST:
            self.con.close()
            raise HistoryError(f"{self.path} has schema version {version}, newer than this s2d-plan "
                               f"knows ({LATEST}); upgrade s2d-plan")
        _files.mark_dirty(home)
        removed = _files.remove_temp_files(home)  # we hold the lock: their writers are dead
        if removed:
            self.notes.append(f"history: removed {len(removed)} temporary file(s) a killed executor left "
                              f"({', '.join(p.name for p in removed[:3])})")
        self.broken: HistoryWriteError | None = None
        self._dirty = True
        self._last_snapshot = 0.0
        self._snapshot_cost = 0.0
        self._base_id: str | None = None
        self._publish_failed = False
        self.live_run: str | None = None
        self._open = True

    # -- writes ----------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> BaseException:
        """What to raise for ``exc``: a storage failure breaks the writer for good."""
        if not _is_write_failure(exc):
            return exc
        if self.broken is None:
            self.broken = HistoryWriteError(self.path, exc)
        return self.broken

    def _check(self) -> None:
        if self.broken is not None:
            raise self.broken

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._check()
        try:
            self.con.execute(sql, params or [])
        except Exception as exc:
            raise self._failed(exc) from None
        self._dirty = True

    def insert(self, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))

    def update_stage(self, run_id: str, stage_id: str, **cols: Any) -> None:
        sets = ", ".join(f"{c} = ?" for c in cols)
        self.execute(f"UPDATE stages SET {sets} WHERE run_id = ? AND stage_id = ?",
                     [*cols.values(), run_id, stage_id])

    def update_run(self, run_id: str, **cols: Any) -> None:
        sets = ", ".join(f"{c} = ?" for c in cols)
        self.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*cols.values(), run_id])

    def append_metrics(self, run_id: str, stage_id: str, attempt: int, cache_key: str,
                       lines: list[str], offset: int | None = None) -> None:
        """Append a runner's metric lines (JSON text, see ``runners.common.MetricWriter``)
        in one transaction, together with how far into the metrics file they reach
        (``offset``), so a restarted executor can ingest exactly the rest after a kill -9.

        Lines go through the appender into a temporary table as text and are parsed by
        DuckDB in one INSERT ... SELECT; lines that are not metrics (artifacts, a torn
        write, foreign output) are skipped, and NaN/inf values are stored as NULL.

        On any failure nothing is committed (neither rows nor offset) and the caller keeps
        its lines: it must not drop them before this returns."""
        self._ingest(run_id, stage_id, attempt, cache_key, lines, offset, replace=False)

    def reingest_attempt(self, run_id: str, stage_id: str, attempt: int, cache_key: str,
                         lines: list[str], offset: int) -> None:
        """Replace one attempt's metric rows by its whole metrics file, in one transaction
        (``history --check``'s repair: the file is the source of every row)."""
        self._ingest(run_id, stage_id, attempt, cache_key, lines, offset, replace=True)

    def _ingest(self, run_id: str, stage_id: str, attempt: int, cache_key: str, lines: list[str],
                offset: int | None, replace: bool) -> None:
        """Metric lines (and the offset they reach) in one transaction; ``replace`` first
        drops the attempt's rows. The buffer is the caller's until this returns."""
        self._check()
        try:
            self.con.execute("BEGIN")
            if replace:
                self.con.execute("DELETE FROM metrics WHERE run_id = ? AND stage_id = ? AND attempt = ?",
                                 [run_id, stage_id, attempt])
            if lines:
                self._appender.append_rows([(line,) for line in lines])
                self._appender.flush()
                self.con.execute(_DROP_REPEATED, [run_id, stage_id, attempt])
                self.con.execute(_INSERT_METRICS, [run_id, stage_id, attempt, cache_key])
                self.con.execute("DELETE FROM _metric_lines")
            if offset is not None:
                self.con.execute("UPDATE stages SET metrics_offset = ? WHERE run_id = ? AND stage_id = ?",
                                 [offset, run_id, stage_id])
            self.con.execute("COMMIT")
        except Exception as exc:
            self._undo()
            raise self._failed(exc) from None
        self._dirty = True

    def count_metric_lines(self, lines: list[str]) -> int:
        """How many of ``lines`` are metrics (what ``append_metrics`` would insert)."""
        self._check()
        try:
            self._appender.append_rows([(line,) for line in lines])
            self._appender.flush()
            return self.con.execute("SELECT count(*) FROM (SELECT 1" + _METRIC_ROWS + ")").fetchall()[0][0]
        finally:
            self._undo()

    def _undo(self) -> None:
        """Roll back after a failed append. A failed COMMIT has already ended the
        transaction ("no transaction is active"): that must not hide the real error."""
        for undo in (lambda: self.con.execute("ROLLBACK"), self._appender.clear,
                     lambda: self.con.execute("DELETE FROM _metric_lines")):
            try:
                undo()
            except Exception:
                pass

    def append_rows(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        if not rows:
            return
        self._check()
        try:
            appender = self.con.appender(table, columns=list(columns))
            appender.append_rows(rows)
            appender.flush()
        except Exception as exc:
            raise self._failed(exc) from None
        self._dirty = True

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        self._check()
        try:
            return self.con.execute(sql, params or []).fetchall()
        except duckdb.IOException as exc:  # a block that cannot be read: the file is damaged
            raise _files.damaged(self.path, exc) from None

    # -- snapshots (see s2d_plan.history.snapshots) -----------------------------------------
    def begin_live(self, run_id: str) -> None:
        """Publish the whole history once; from now on publish only ``run_id``'s rows."""
        self.live_run = None
        self.publish(force=True)  # the whole history as the base (guarded: never fails the run)
        _snapshots.drop_live(self.home)
        self.live_run = run_id
        self._dirty = True

    def publish(self, force: bool = False) -> bool:
        """Publish what readers see, if due (or ``force``): the current run's rows when a
        run is live, else the whole database. Never raises: a failed publish leaves
        readers staler (they notice: ``s2d_plan.history.read``), not the run failed."""
        now = time.monotonic()
        if self.broken is not None:
            return False
        if not force and (not self._dirty or now - self._last_snapshot < max(SNAPSHOT_EVERY_S, 3 * self._snapshot_cost)):
            return False
        started = time.monotonic()
        try:
            if self.live_run and self._base_id:
                _snapshots.publish_live(self.con, self.home, self._base_id, self.live_run)
            else:
                self._base_id = _snapshots.publish_base(self.con, self._catalog, self.home)
        except (duckdb.Error, OSError) as exc:
            if not self._publish_failed:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"warning: could not publish the history snapshot (readers see older rows): {first}",
                      file=sys.stderr)
            self._publish_failed = True
            self._last_snapshot = time.monotonic()
            return False
        self._snapshot_cost = time.monotonic() - started
        self._last_snapshot = time.monotonic()
        self._dirty = False
        return True

    def close(self) -> None:
        """Checkpoint, publish the whole history as the base, release the file; mark the
        snapshot clean only when that publish succeeded. Never raises: what failed
        already raised (``broken``), and committed rows are safe in the file or its log."""
        if not self._open:
            return
        published = False
        try:
            if self.broken is None:
                self.con.execute("CHECKPOINT")
                self.live_run = None
                published = self.publish(force=True)
                if published:
                    _snapshots.drop_live(self.home)
        except (duckdb.Error, OSError) as exc:
            self._failed(exc)
        finally:
            try:
                self.con.close()
            except duckdb.Error:
                pass
            self._open = False
        if published:
            _files.mark_clean(self.home)

    # -- the verbs: what the executor records (one statement or one appender batch each) --

    def start_run(self, run_id: str, plan: str, plan_hash: str, graph_json: str, est_gpu_hours: float) -> None:
        self.insert("runs", {"run_id": run_id, "plan": plan, "plan_hash": plan_hash, "status": "RUNNING",
                             "start_time": utcnow(), "graph": graph_json, "est_gpu_hours": est_gpu_hours,
                             "pid": os.getpid(), "host": os.uname().nodename})

    def add_stage(self, run_id: str, position: int, stage: Any, cache_key: str, output_dir: Path) -> None:
        """A stage of the run, PENDING (``stage``: a ``contract.Stage``)."""
        self.insert("stages", {"position": position, "run_id": run_id, "stage_id": stage.id, "kind": stage.kind,
                               "status": "PENDING", "cache_key": cache_key,
                               "est_gpu_hours": stage.estimated.gpu_hours, "policy": stage.policy,
                               "teacher": stage.teacher, "needs": list(stage.needs),
                               "gpus": stage.resources.gpus, "output_dir": str(output_dir)})

    def producer_attempt(self, stage_id: str, cache_key: str) -> int | None:
        """The attempt that produced a cached output (None if the history lost it)."""
        return self.query("SELECT max(attempt) FROM stages WHERE stage_id = ? AND cache_key = ? "
                          "AND status = 'FINISHED'", [stage_id, cache_key])[0][0]

    def next_attempt(self, stage_id: str, cache_key: str) -> int:
        """1 + the attempts that ever ran this (stage id, key), in any run."""
        row = self.query("SELECT coalesce(max(attempt), 0) FROM stages WHERE stage_id = ? AND cache_key = ? "
                         "AND status NOT IN ('CACHED', 'SKIPPED', 'PENDING') AND attempt IS NOT NULL",
                         [stage_id, cache_key])
        # a stage retried on a cluster goes back to PENDING; its attempts are in placements
        again = self.query("SELECT coalesce(max(p.attempt), 0) FROM placements p JOIN stages s USING (run_id, stage_id) "
                           "WHERE p.stage_id = ? AND s.cache_key = ?", [stage_id, cache_key])
        return int(max(row[0][0], again[0][0])) + 1

    def start_stage(self, run_id: str, stage_id: str, attempt: int, pid: int, log_path: Path,
                    metrics_path: Path) -> None:
        now = utcnow()
        self.update_stage(run_id, stage_id, status="RUNNING", attempt=attempt, start_time=now, pid=pid,
                          heartbeat=now, log_path=str(log_path), metrics_path=str(metrics_path),
                          metrics_offset=0, error=None)

    def finish_stage(self, run_id: str, stage_id: str, status: str, wall_s: float, gpus: int,
                     exit_code: int | None, error: str | None) -> None:
        """A stage attempt ended (FINISHED, FAILED or KILLED): a stage boundary, so the
        write-ahead log is folded into the file."""
        self.update_stage(run_id, stage_id, status=status, end_time=utcnow(), wall_s=wall_s,
                          gpu_hours=wall_s / 3600 * gpus, exit_code=exit_code, error=error)
        self.execute("CHECKPOINT")

    def record_placements(self, run_id: str, stage_id: str, attempt: int, backend: str, job_id: str,
                          placements: Sequence[Any]) -> None:
        """Where an attempt runs (``placements``: ``launchers.Placement``, one per node)."""
        now = utcnow()
        self.append_rows("placements", ("run_id", "stage_id", "attempt", "backend", "job_id", "node", "gpus",
                                        "task_id", "status", "start_time"),
                         [(run_id, stage_id, attempt, backend, job_id, p.node, p.gpus, p.task_id, "RUNNING", now)
                          for p in placements])

    def end_placements(self, run_id: str, stage_id: str, attempt: int | None, status: str,
                       error: str | None) -> None:
        self.execute("UPDATE placements SET status = ?, error = ?, end_time = ? WHERE run_id = ? AND stage_id = ? "
                     "AND attempt = ? AND status = 'RUNNING'",
                     [status, (error or "").split("\n", 1)[0] or None, utcnow(), run_id, stage_id, attempt])

    def orphan_jobs(self) -> list[tuple]:
        """Attempts still RUNNING on a cluster (a dead executor's), one row per job: (backend,
        job_id, run_id, stage_id, attempt, cache_key, nodes, gpus per node, start_time,
        log_path, metrics_path, metrics_offset, executor pid, executor host, heartbeat)."""
        return self.query("""
            SELECT p.backend, p.job_id, s.run_id, s.stage_id, s.attempt, s.cache_key, count(*), max(p.gpus),
                   any_value(s.start_time), any_value(s.log_path), any_value(s.metrics_path),
                   coalesce(any_value(s.metrics_offset), 0), any_value(r.pid), any_value(r.host),
                   any_value(s.heartbeat)
            FROM placements p JOIN stages s USING (run_id, stage_id, attempt) JOIN runs r USING (run_id)
            WHERE s.status = 'RUNNING' AND p.status = 'RUNNING' AND p.backend <> 'local'
            GROUP BY p.backend, p.job_id, s.run_id, s.stage_id, s.attempt, s.cache_key""")

    def heartbeat(self, run_id: str) -> None:
        self.execute("UPDATE stages SET heartbeat = ? WHERE run_id = ? AND status = 'RUNNING'", [utcnow(), run_id])

    def finish_run(self, run_id: str, status: str, error: str | None) -> float:
        """Close the run; returns its measured GPU-hours."""
        gpu_hours = self.query("SELECT coalesce(sum(gpu_hours), 0) FROM stages WHERE run_id = ?", [run_id])[0][0]
        self.update_run(run_id, status=status, end_time=utcnow(), gpu_hours=gpu_hours, error=error)
        return gpu_hours

    def record_evidence(self, run_id: str, stage_id: str, path: Path) -> None:
        """A probe's per-prompt counts (``evidence.jsonl``) into ``evidence``."""
        rows, now = [], utcnow()
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                rows.append((run_id, stage_id, d["model"], d.get("source"), int(d["prompt_index"]),
                             int(d["samples"]), int(d["correct"]), now))
        self.append_rows("evidence", ("run_id", "stage_id", "model", "source", "prompt_index", "samples", "correct",
                                      "time"), rows)

    def record_trials(self, run_id: str, trials: Any) -> None:
        """The allocator's search trials (a graph's ``meta["trials"]``) into ``trials``."""
        if not isinstance(trials, list):
            return
        known = ("number", "structure", "params", "value", "gpu_hours", "feasible")
        rows = []
        for t in trials:
            if not isinstance(t, dict):
                continue
            extra = {k: v for k, v in t.items() if k not in known}
            rows.append((run_id, t.get("number"), None if t.get("structure") is None else str(t["structure"]),
                         json.dumps(t.get("params", {}), default=str), _number(t.get("value")),
                         _number(t.get("gpu_hours")), None if t.get("feasible") is None else bool(t["feasible"]),
                         json.dumps(extra, default=str) if extra else None))
        self.append_rows("trials", ("run_id", "number", "structure", "params", "value", "gpu_hours", "feasible",
                                    "extra"), rows)

    def record_artifact(self, row: tuple) -> None:
        self.append_rows("artifacts", ARTIFACT_COLUMNS, [row])

    def stale_stages(self) -> list[tuple]:
        """Stages left RUNNING (by a dead executor, since we hold the write lock)."""
        return self.query("""
            SELECT s.run_id, s.stage_id, s.attempt, s.cache_key, s.pid, s.heartbeat, s.metrics_path,
                   coalesce(s.metrics_offset, 0), s.log_path, s.start_time, s.gpus, r.pid, r.host, s.output_dir
            FROM stages s JOIN runs r USING (run_id) WHERE s.status = 'RUNNING'""")

    def close_dead_runs(self, new_run: str) -> None:
        """Runs a dead executor left open: their PENDING stages SKIPPED, the run FAILED."""
        for (run_id,) in self.query("SELECT run_id FROM runs WHERE status IN ('RUNNING', 'SCHEDULED')"):
            self.execute("UPDATE stages SET status = 'SKIPPED', error = 'not started: the executor died' "
                         "WHERE run_id = ? AND status = 'PENDING'", [run_id])
            self.update_run(run_id, status="FAILED", end_time=utcnow(), error=f"executor died; resumed by run {new_run}")

    def last_metric_time(self, run_id: str, stage_id: str, attempt: int) -> Any:
        return self.query("SELECT max(time) FROM metrics WHERE run_id = ? AND stage_id = ? AND attempt = ?",
                          [run_id, stage_id, attempt])[0][0]
