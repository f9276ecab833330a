"""The run history: one DuckDB file, written only by the executor, read with plain SQL.

Where it lives: ``<home>/history.duckdb`` (home = ``--home`` / ``S2D_HOME`` / ``./.s2d``,
see ``s2d_plan.paths``). Tables (the public contract, DESIGN.md): ``runs``, ``stages``,
``metrics``, ``artifacts``, ``evidence``, ``trials``, plus the view ``metrics_latest``
(newest attempt per stage, key and step, so a resumed stage has one clean curve) and
``schema_version`` (numbered migrations, ``s2d_plan._migrations``).

Readers never block the run. DuckDB lets one process write a file and refuses a
read-only open while that writer holds it, so the executor keeps the main file open for
its whole run and publishes copies that readers open instead (``s2d_plan._snapshots``):
the whole history once when the run starts (``history.snapshot.duckdb``), then every
couple of seconds and at each stage boundary only the current run's rows
(``history.live.duckdb``, cheap however large the history grows). A reader opens the
main file read-only when no executor holds it, else base + live, so results are at
most a few seconds stale and a query never takes a lock the run needs. After a clean
exit the snapshot equals the main file and readers use it, so a query cannot delay the
next ``execute`` either. ``history`` runs queries only: INSERT, DELETE, DROP, ATTACH
and the like are refused before they reach DuckDB.

    >>> rows = load_evidence(Path("/nonexistent"), "Qwen/Qwen3-8B")
    >>> rows
    []
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb

from s2d_plan import _snapshots
from s2d_plan._migrations import LATEST, migrate
from s2d_plan.errors import HistoryError
from s2d_plan.paths import db_path, resolve_home, snapshot_path

CLEAN_MARKER = "history.clean"  # present while the snapshot equals the main file
SNAPSHOT_EVERY_S = 2.0  # publish at most this often (more rarely when a copy is slow)

# Writers open in this process, by database path: a reader in the same process (the
# allocator calling load_evidence during `execute PLAN.yaml`) must reuse the writer's
# connection, because DuckDB refuses a second open of a file with another configuration.
_WRITERS: dict[Path, "HistoryWriter"] = {}
# What `history` runs; anything else (INSERT, DELETE, DROP, ATTACH ...) is refused.
READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA", "CALL", "SET", "VARIABLE_SET", "COPY"})


_INSERT_METRICS = """
INSERT INTO metrics
SELECT $1, $2, $3, m.step, m.key, CASE WHEN isfinite(m.value) THEN m.value END,
       coalesce(make_timestamp(CAST(m.time * 1000000 AS BIGINT)), now()::TIMESTAMP), $4
FROM (SELECT from_json(line, '{"step": "BIGINT", "key": "VARCHAR", "value": "DOUBLE", "time": "DOUBLE"}') AS m
      FROM _metric_lines WHERE json_valid(line))
WHERE m.key IS NOT NULL AND m.step IS NOT NULL"""


def utcnow() -> dt.datetime:
    """Naive UTC: every TIMESTAMP column of the history is UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """duckdb.connect without the progress bar (it would draw over the live display)."""
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET enable_progress_bar = false")
    return con


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


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
        home.mkdir(parents=True, exist_ok=True)
        self.con = _open_writable(self.path, lock_timeout_s)
        version = migrate(self.con)
        if version > LATEST:
            self.con.close()
            raise HistoryError(f"{self.path} has schema version {version}, newer than this s2d-plan "
                               f"knows ({LATEST}); upgrade s2d-plan")
        self.con.execute("CREATE TEMP TABLE _metric_lines (line VARCHAR)")
        self._appender = self.con.appender("_metric_lines")
        self._catalog = self.con.execute("SELECT current_database()").fetchall()[0][0]
        (home / CLEAN_MARKER).unlink(missing_ok=True)
        self._dirty = True
        self._last_snapshot = 0.0
        self._snapshot_cost = 0.0
        self._base_id: str | None = None
        self._publish_failed = False
        self.live_run: str | None = None
        _WRITERS[self.path] = self

    # -- writes ----------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self.con.execute(sql, params or [])
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
        write, foreign output) are skipped, and NaN/inf values are stored as NULL."""
        self.con.execute("BEGIN")
        try:
            if lines:
                self._appender.append_rows([(line,) for line in lines])
                self._appender.flush()
                self.con.execute(_INSERT_METRICS, [run_id, stage_id, attempt, cache_key])
                self.con.execute("DELETE FROM _metric_lines")
            if offset is not None:
                self.con.execute("UPDATE stages SET metrics_offset = ? WHERE run_id = ? AND stage_id = ?",
                                 [offset, run_id, stage_id])
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            self._appender.clear()
            raise
        self._dirty = True

    def append_rows(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        if not rows:
            return
        appender = self.con.appender(table, columns=list(columns))
        appender.append_rows(rows)
        appender.flush()
        self._dirty = True

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()

    # -- snapshots (see s2d_plan._snapshots) -----------------------------------------
    def begin_live(self, run_id: str) -> None:
        """Publish the whole history once; from now on publish only ``run_id``'s rows."""
        self.live_run = None
        self.publish(force=True)  # the whole history as the base (guarded: never fails the run)
        _snapshots.drop_live(self.home)
        self.live_run = run_id
        self._dirty = True

    def publish(self, force: bool = False) -> bool:
        """Publish what readers see, if due (or ``force``): the current run's rows when a
        run is live, else the whole database."""
        now = time.monotonic()
        if not force and (not self._dirty or now - self._last_snapshot < max(SNAPSHOT_EVERY_S, 3 * self._snapshot_cost)):
            return False
        started = time.monotonic()
        try:
            if self.live_run and self._base_id:
                _snapshots.publish_live(self.con, self.home, self._base_id, self.live_run)
            else:
                self._base_id = _snapshots.publish_base(self.con, self._catalog, self.home)
        except (duckdb.Error, OSError) as exc:  # readers get staler; the run must not fail
            if not self._publish_failed:
                print(f"warning: could not publish the history snapshot: {exc}", file=sys.stderr)
            self._publish_failed = True
            self._last_snapshot = time.monotonic()
            return False
        self._snapshot_cost = time.monotonic() - started
        self._last_snapshot = time.monotonic()
        self._dirty = False
        return True

    def close(self) -> None:
        """Checkpoint, publish the whole history as the base, release the file."""
        if self.path not in _WRITERS:
            return
        try:
            self.con.execute("CHECKPOINT")
            self.live_run = None
            self.publish(force=True)
            _snapshots.drop_live(self.home)
        finally:
            self.con.close()
            _WRITERS.pop(self.path, None)
        (self.home / CLEAN_MARKER).write_text(str(time.time()))


def _open_writable(path: Path, timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        try:
            return connect(path)
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                raise HistoryError(f"cannot open the history {path}: {exc}") from None
            if time.monotonic() > deadline:
                raise HistoryError(
                    f"the history {path} is held by another process (is another "
                    f"`s2d-plan execute` running with this --home?): {exc}") from None
            if not warned:  # a reader's brief open, or another executor: say which we wait for
                print(f"waiting for the history lock: {exc}", file=sys.stderr, flush=True)
                warned = True
            time.sleep(0.2)


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


def run_history_query(sql: str, table: bool = False, csv: bool = False, json_out: bool = False,
                      home: str | Path | None = None) -> None:
    """`s2d-plan history SQL`: print the result as a table, CSV or a JSON array."""
    from s2d_plan._output import print_rows

    if sum([table, csv, json_out]) > 1:
        raise HistoryError("choose one of --table, --csv, --json")
    cols, rows = query(sql, home)
    fmt = "json" if json_out else "csv" if csv else "table" if table or sys.stdout.isatty() else "csv"
    print_rows(cols, rows, fmt)


def run_list_runs(home: str | Path | None = None) -> None:
    """`s2d-plan runs`: every run, newest first, with stage counts and GPU-hours."""
    from s2d_plan._output import print_rows

    home = resolve_home(home)
    if not db_path(home).exists():
        print(f"no runs yet (no history at {db_path(home)})")
        return
    cols, rows = query("""
        SELECT r.run_id, r.plan, r.status, strftime(r.start_time, '%Y-%m-%d %H:%M:%S') AS started,
               round(epoch(coalesce(r.end_time, now()::TIMESTAMP) - r.start_time), 1) AS seconds,
               count(s.stage_id) AS stages,
               count(*) FILTER (s.status IN ('FINISHED', 'CACHED')) AS done,
               count(*) FILTER (s.status = 'CACHED') AS cached,
               count(*) FILTER (s.status IN ('FAILED', 'KILLED')) AS failed,
               round(r.est_gpu_hours, 3) AS est_gpu_h, round(sum(s.gpu_hours), 4) AS gpu_h
        FROM runs r LEFT JOIN stages s USING (run_id)
        GROUP BY ALL ORDER BY started DESC, r.run_id DESC""", home)
    if not rows:
        print("no runs yet")
        return
    print_rows(cols, rows, "table")


def run_show(run: str, home: str | Path | None = None) -> None:
    """`s2d-plan show RUN`: a run's stages, statuses, estimated vs actual GPU-hours and
    final metrics (a unique prefix of the run id is enough)."""
    from s2d_plan._output import print_rows

    _, ids = query(f"SELECT run_id FROM runs WHERE starts_with(run_id, {_sql_str(run)}) ORDER BY run_id", home)
    if not ids:
        raise HistoryError(f"no run matches {run!r} (see `s2d-plan runs`)")
    if len(ids) > 1:
        raise HistoryError(f"{run!r} matches {len(ids)} runs: " + ", ".join(r[0] for r in ids[:5]))
    run_id = ids[0][0]
    _, head = query(f"""SELECT plan, status, start_time, end_time, est_gpu_hours, error
                        FROM runs WHERE run_id = {_sql_str(run_id)}""", home)
    plan, status, start, end, est, error = head[0]
    print(f"run {run_id}  plan {plan}  {status}  started {start:%Y-%m-%d %H:%M:%S}"
          + (f"  took {(end - start).total_seconds():.1f}s" if end else ""))
    rid = _sql_str(run_id)
    # final metrics: what this run's attempt logged; for a CACHED stage, its producer's
    cols, rows = query(f"""
        WITH s AS (SELECT * FROM stages WHERE run_id = {rid}),
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
        ORDER BY s.position, s.stage_id""", home)
    print_rows(cols, rows, "table")
    _, errors = query(f"""SELECT stage_id, status, error FROM stages
                          WHERE run_id = {rid} AND error IS NOT NULL ORDER BY position""", home)
    for stage_id, stage_status, text in errors:
        print(f"\n{stage_id} {stage_status}: {text.rstrip()}")
    if error:
        print(f"\nrun: {error}")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def graph_json(graph: Any) -> str:
    return json.dumps(graph.model_dump(mode="json", exclude_none=True))
