"""The history's files on disk: opening them, who holds them, damage, restore, leftovers.

Everything here is about the files, not the tables: the writer's open (waiting for a
lock and naming who holds it), the locked read-only open every reader uses, the clean
marker (which says the snapshot equals the main file), the restore of a deleted main
file from its snapshot, the error a damaged file gets, and the temporary files a killed
executor or a failed publish leaves behind.

    >>> LOCKED["enable_external_access"], LOCKED["lock_configuration"]
    (False, True)
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import duckdb

from s2d_plan.errors import HistoryError
from s2d_plan.paths import db_path, snapshot_path

CLEAN_MARKER = "history.clean"  # the snapshot equals the main file as the marker describes it
# Every setting through which a query could write a file, read one, reach the network or
# install code, switched off and then locked, so no later SET can switch it back on.
# lock_configuration must come last: once it is set nothing else can be.
LOCKED: dict[str, bool] = {
    "enable_external_access": False,  # no COPY TO / EXPORT / ATTACH / read_csv('/etc/...') / http
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}
_GLOBAL = {k: v for k, v in LOCKED.items() if k != "lock_configuration"}
_PID_IN_LOCK = re.compile(r"\(PID (\d+)\)")


def connect_locked(path: Path | str) -> duckdb.DuckDBPyConnection:
    """A read-only connection to ``path`` that can neither write, fetch nor install."""
    con = duckdb.connect(str(path), read_only=True, config=dict(_GLOBAL, max_temp_directory_size="4GiB"))
    try:
        return lock_down(con)
    except duckdb.Error:
        con.close()
        raise


def lock_down(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Apply ``LOCKED`` to an open connection (after it attached what it reads); the
    progress bar goes too (a session setting: it would draw over the live display)."""
    con.execute("SET enable_progress_bar = false")
    for name, value in LOCKED.items():  # lock_configuration last
        con.execute(f"SET {name} = {'true' if value else 'false'}")
    return con


def is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def is_held_here(exc: Exception) -> bool:
    """DuckDB's refusal of a read-only open of a file this very process writes: readers
    then read the published copies, as a reader in another process does."""
    return "different configuration" in str(exc).lower()


def lock_holder(exc: Exception) -> str:
    """Who holds the history, in words, from DuckDB's lock error ("(PID 123)")."""
    found = _PID_IN_LOCK.search(str(exc))
    if not found:
        return "another process"
    pid = int(found.group(1))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return f"process {pid}"
    command = " ".join(argv)[:160]
    if "execute" in argv and any("s2d" in a for a in argv):
        return f"another `s2d-plan execute` (pid {pid}: {command})"
    return (f"process {pid} ({command}), which has the history file open (a reader holding the main "
            "file blocks a writer: close it)")


def damaged(path: Path, exc: Exception) -> HistoryError:
    """The error for a history file DuckDB cannot read, with how to restore it (any other
    error opening it: a plain one)."""
    if not isinstance(exc, duckdb.IOException) or "no space left" in str(exc).lower():
        return HistoryError(f"cannot open the history {path}: {_first_line(exc)}")
    snap = snapshot_path(path.parent)
    if path == snap or not snap.exists():
        how = "there is no snapshot to restore from; move the damaged file aside to start an empty history"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.stat().st_mtime))
        how = (f"its snapshot {snap} (written {when}) is intact if it opens: to restore from it, "
               f"move the damaged file aside (mv {path} {path}.damaged) and run `s2d-plan history --check`, "
               "which restores the history from the snapshot")
    return HistoryError(f"the history file {path} is damaged ({_first_line(exc)}); {how}")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left" in str(exc).lower()


# -- the clean marker -----------------------------------------------------------------
def _stamp(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def mark_clean(home: Path) -> bool:
    """Say the snapshot equals the main file as it is now (call after both are closed)."""
    stamp = _stamp(db_path(home))
    if stamp is None:
        return False
    tmp = home / f".{CLEAN_MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, home / CLEAN_MARKER)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def mark_dirty(home: Path) -> None:
    (home / CLEAN_MARKER).unlink(missing_ok=True)


def snapshot_is_current(home: Path) -> bool:
    """The clean marker exists and the main file is still exactly as it described."""
    try:
        recorded = json.loads((home / CLEAN_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded == _stamp(db_path(home))


def last_write(path: Path) -> float:
    """When the main file (or its write-ahead log) last changed; 0 if neither exists."""
    times = [p.stat().st_mtime for p in (path, path.with_name(path.name + ".wal")) if p.exists()]
    return max(times, default=0.0)


# -- restore and leftovers ------------------------------------------------------------
def restore_from_snapshot(home: Path, info_table: str) -> str | None:
    """If the main file is gone and a snapshot survives, copy the snapshot into place and
    return a line saying so; HistoryError if the snapshot cannot be read (never an empty
    history published over it). None when there is nothing to restore."""
    path, snap = db_path(home), snapshot_path(home)
    if path.exists() or not snap.exists():
        return None
    tmp = home / f".history.restore.{os.getpid()}.tmp"
    try:
        shutil.copyfile(snap, tmp)
        con = duckdb.connect(str(tmp))
        try:
            runs = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
            con.execute(f"DROP TABLE IF EXISTS {info_table}")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        try:  # create-if-absent: a second executor restoring at once must not replace the first's
            os.link(tmp, path)
        except FileExistsError:
            remove_with_wal(tmp)
            return None
        remove_with_wal(tmp)
    except (duckdb.Error, OSError) as exc:
        remove_with_wal(tmp)
        raise HistoryError(f"the history {path} is missing and its snapshot {snap} cannot be read "
                           f"({_first_line(exc)}); nothing was changed. Move the snapshot aside to "
                           "start an empty history") from None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.stat().st_mtime))
    return f"history: {path.name} was missing; restored it from {snap.name} (written {when}, {runs} runs)"


def remove_with_wal(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def leftover_temp_files(home: Path) -> list[Path]:
    """Temporary files of the history that no live writer owns (our names: ``.history*.tmp``
    and ``.history*.tmp.wal``, with the writer's pid in the name)."""
    out = []
    for p in sorted(home.glob(".history*.tmp*")) + sorted(home.glob(f".{CLEAN_MARKER}.*.tmp")):
        pid = re.search(r"\.(\d+)\.tmp", p.name)
        if pid and int(pid.group(1)) == os.getpid():
            continue
        out.append(p)
    return out


def remove_temp_files(home: Path) -> list[Path]:
    """Remove leftovers (call with the write lock held: no other writer is alive)."""
    removed = []
    for p in leftover_temp_files(home):
        try:
            p.unlink()
            removed.append(p)
        except OSError as exc:
            print(f"warning: could not remove {p}: {exc}", file=sys.stderr)
    return removed


def open_writable(path: Path, timeout_s: float, connect) -> duckdb.DuckDBPyConnection:
    """The writer's connection (``connect(path)``), waiting up to ``timeout_s`` for the
    lock and saying who holds it; a file DuckDB cannot read is ``damaged``."""
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        try:
            return connect(path)
        except duckdb.Error as exc:
            if not is_lock_error(exc):
                raise damaged(path, exc) from None
            holder = lock_holder(exc)
            if time.monotonic() > deadline:
                raise HistoryError(f"the history {path} is held by {holder}; waited {timeout_s:g} s") from None
            if not warned:  # a reader's brief open, or another executor: say which we wait for
                print(f"waiting for the history lock, held by {holder}", file=sys.stderr, flush=True)
                warned = True
            time.sleep(0.2)
