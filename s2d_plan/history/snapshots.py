"""Copies of the history that readers open while the executor holds the main file.

DuckDB gives a file to one writer process, and a read-only open fails while it holds it.
So the executor publishes copies, each written under a temporary name and renamed into
place (a reader that has the old copy open keeps reading its old inode):

- ``history.snapshot.duckdb`` (the *base*): the whole database, published when the
  executor starts (after recovering a crashed run) and when it closes. Its cost grows
  with the history (~0.1-0.3 s per million metric rows), so it is not repeated.
- ``history.live.duckdb``: only the current run's rows of every run-keyed table,
  published every couple of seconds while the run goes on. Its cost grows with this run
  only. During a run nothing but the current run's rows changes (recovery of older runs
  happens before the base is taken), so base + live is the whole history.

A reader attaches both into an in-memory database and defines each table as a view
(base UNION ALL live), and the base's own views (``metrics_latest``) on top. The live
copy names the base it extends; a live copy of another base is ignored.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import duckdb

from s2d_plan.history.files import lock_down, remove_with_wal
from s2d_plan.paths import snapshot_path

INFO_TABLE = "_s2d_snapshot"  # (base_id, run_id) inside each copy
RUN_TABLES = ("runs", "stages", "metrics", "artifacts", "evidence", "trials", "placements")


def live_path(home: Path) -> Path:
    return home / "history.live.duckdb"


def _lit(path: Path) -> str:
    """A path as an SQL string literal (ATTACH takes no parameters)."""
    return "'" + str(path).replace("'", "''") + "'"


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def publish_base(con: duckdb.DuckDBPyConnection, catalog: str, home: Path) -> str:
    """Copy the whole database to the base snapshot; return the new base id."""
    base_id = uuid.uuid4().hex
    target = snapshot_path(home)
    tmp = _tmp_for(target)
    remove_with_wal(tmp)
    try:
        con.execute(f"ATTACH {_lit(tmp)} AS __base")
        try:
            con.execute(f'COPY FROM DATABASE "{catalog}" TO __base')
            con.execute(f"CREATE TABLE __base.{INFO_TABLE} AS SELECT ? AS base_id, NULL::VARCHAR AS run_id", [base_id])
        finally:
            con.execute("DETACH __base")
        os.replace(tmp, target)
    except BaseException:  # a full disk, a kill: leave no half copy behind
        _quietly_detach(con, "__base")
        remove_with_wal(tmp)
        raise
    return base_id


def publish_live(con: duckdb.DuckDBPyConnection, home: Path, base_id: str, run_id: str) -> None:
    """Copy the rows of ``run_id`` to the live snapshot that extends base ``base_id``."""
    target = live_path(home)
    tmp = _tmp_for(target)
    remove_with_wal(tmp)
    try:
        con.execute(f"ATTACH {_lit(tmp)} AS __live")
        try:
            for table in RUN_TABLES:
                con.execute(f"CREATE TABLE __live.{table} AS SELECT * FROM {table} WHERE run_id = ?", [run_id])
            con.execute(f"CREATE TABLE __live.{INFO_TABLE} AS SELECT ? AS base_id, ? AS run_id", [base_id, run_id])
        finally:
            con.execute("DETACH __live")
        os.replace(tmp, target)
    except BaseException:
        _quietly_detach(con, "__live")
        remove_with_wal(tmp)
        raise


def _quietly_detach(con: duckdb.DuckDBPyConnection, name: str) -> None:
    try:
        con.execute(f"DETACH DATABASE IF EXISTS {name}")
    except duckdb.Error:
        pass


def drop_live(home: Path) -> None:
    live_path(home).unlink(missing_ok=True)


READER_TEMP_MAX = "4GiB"


def reader_temp_dir(home: Path) -> Path:
    """Where a reader's in-memory connection spills (DuckDB creates it when it does)."""
    return home / "tmp" / "readers"


def open_composite(home: Path) -> duckdb.DuckDBPyConnection | None:
    """An in-memory connection showing base + live as the history's tables and views,
    locked like every reader once they are attached (``files.lock_down``), or None when
    there is no readable base snapshot."""
    base = snapshot_path(home)
    if not base.exists():
        return None
    # An in-memory database spills to DuckDB's default temp_directory, the relative
    # ".tmp", and a locked connection may still read its temp directory: so it is a
    # folder of the home's own, capped (issue 23: `read_text('.tmp/x')` read the cwd).
    con = duckdb.connect(":memory:", config={"temp_directory": str(reader_temp_dir(home)),
                                             "max_temp_directory_size": READER_TEMP_MAX})
    try:
        con.execute(f"ATTACH {_lit(base)} AS base (READ_ONLY)")
    except duckdb.Error:
        con.close()
        return None  # replaced between the check and the open (the caller retries), or damaged
    try:
        return lock_down(_define_views(con, home))
    except duckdb.Error:  # an empty or damaged copy
        con.close()
        return None


def _define_views(con: duckdb.DuckDBPyConnection, home: Path) -> duckdb.DuckDBPyConnection:
    base_id = _info(con, "base")
    live = live_path(home)
    has_live = False
    if live.exists():
        try:
            con.execute(f"ATTACH {_lit(live)} AS live (READ_ONLY)")
            has_live = _info(con, "live") == base_id and base_id is not None
            if not has_live:
                con.execute("DETACH live")
        except (duckdb.IOException, duckdb.InvalidInputException):
            has_live = False
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'base' AND table_name <> ?",
        [INFO_TABLE]).fetchall()]
    for table in tables:
        union = f" UNION ALL BY NAME SELECT * FROM live.main.{table}" if has_live and table in RUN_TABLES else ""
        con.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM base.main.{table}{union}")
    for (sql,) in con.execute("SELECT sql FROM duckdb_views() WHERE database_name = 'base' AND NOT internal").fetchall():
        con.execute(sql.replace("CREATE VIEW", "CREATE TEMP VIEW", 1))
    if not tables:
        raise duckdb.InvalidInputException("the snapshot holds no tables")
    return con


def _info(con: duckdb.DuckDBPyConnection, db: str) -> str | None:
    try:
        rows = con.execute(f"SELECT base_id FROM {db}.main.{INFO_TABLE}").fetchall()
    except duckdb.CatalogException:
        return None
    return rows[0][0] if rows else None
