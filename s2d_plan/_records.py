"""What the executor records besides statuses: artifacts, probe evidence, allocator
trials, and the recovery of stages a dead executor left RUNNING."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from runners.common import is_complete
from s2d_plan import _procs
from s2d_plan.errors import HistoryError
from s2d_plan.history import HistoryWriter, utcnow
from s2d_plan.paths import attempt_file


ARTIFACT_COLUMNS = ("run_id", "stage_id", "name", "uri", "sha256", "bytes", "attempt", "cache_key", "time")


def prepare_dirs(output: Path, work: Path, clean: bool, aside: Path | None = None) -> Path | None:
    """Make ``work`` ready for a new attempt; never start on a COMPLETE-less output.

    A complete output being re-run (``--force``) is moved to ``aside`` rather than
    deleted, so that ``settle_aside`` can put it back if the new attempt does not finish.
    Returns where the old output went, or None."""
    moved = None
    if aside is not None and is_complete(output):
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(output, aside)
        moved = aside
    if clean:
        shutil.rmtree(output, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    elif output.exists() and not is_complete(output):
        # renamed into place but never marked: give it back to the runner to finish
        if work.exists():
            shutil.rmtree(output)
        else:
            os.replace(output, work)
    return moved


def settle_aside(output: Path, aside: Path | None) -> bool:
    """After a forced attempt: drop the old output if the new one completed, else put
    the old one back. Returns True when the old output was restored."""
    if aside is None or not aside.exists():
        return False
    if is_complete(output):
        shutil.rmtree(aside, ignore_errors=True)
        return False
    shutil.rmtree(output, ignore_errors=True)
    os.replace(aside, output)
    return True


def reclaim_aside(output: Path) -> bool:
    """A forced attempt whose executor died leaves the old output set aside; when the
    output itself is not complete, put the newest complete one back (same key: same
    content). Returns whether ``output`` is complete afterwards."""
    if is_complete(output):
        return True
    asides = sorted(output.parent.glob(f"{output.name}.replaced-*"))
    for aside in reversed(asides):
        if is_complete(aside):
            shutil.rmtree(output, ignore_errors=True)
            os.replace(aside, output)
            break
    for stale in output.parent.glob(f"{output.name}.replaced-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return is_complete(output)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_row(run_id: str, stage_id: str, name: str, path: Path, attempt: int, key: str) -> tuple | None:
    """(run_id, stage_id, name, uri, sha256, bytes, ...) for a file or a directory (whose
    hash covers each file's relative path and hash, in sorted order)."""
    if path.is_file():
        digest, size = _file_sha256(path), path.stat().st_size
    elif path.is_dir():
        h, size = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n".encode())
            size += f.stat().st_size
        digest = h.hexdigest()
    else:
        return (run_id, stage_id, name, path.as_uri(), None, None, attempt, key, utcnow())
    return (run_id, stage_id, name, path.as_uri(), digest, size, attempt, key, utcnow())


def record_evidence(db: HistoryWriter, run_id: str, stage_id: str, path: Path) -> None:
    rows, now = [], utcnow()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            rows.append((run_id, stage_id, d["model"], d.get("source"), int(d["prompt_index"]),
                         int(d["samples"]), int(d["correct"]), now))
    db.append_rows("evidence", ("run_id", "stage_id", "model", "source", "prompt_index", "samples", "correct", "time"), rows)


def record_trials(db: HistoryWriter, run_id: str, trials: Any) -> None:
    if not isinstance(trials, list):
        return
    known = ("number", "structure", "params", "value", "gpu_hours", "feasible")
    rows = []
    for t in trials:
        if not isinstance(t, dict):
            continue
        extra = {k: v for k, v in t.items() if k not in known}
        value, hours = t.get("value"), t.get("gpu_hours")
        rows.append((run_id, t.get("number"), None if t.get("structure") is None else str(t["structure"]),
                     json.dumps(t.get("params", {}), default=str),
                     float(value) if isinstance(value, (int, float)) else None,
                     float(hours) if isinstance(hours, (int, float)) else None,
                     None if t.get("feasible") is None else bool(t["feasible"]),
                     json.dumps(extra, default=str) if extra else None))
    db.append_rows("trials", ("run_id", "number", "structure", "params", "value", "gpu_hours", "feasible", "extra"), rows)


STALE_HEARTBEAT_S = 60.0  # a RUNNING stage on another host counts as dead after this


def recover_stale(db: HistoryWriter, home: Path, new_run: str) -> list[str]:
    """Close what a dead executor left RUNNING; return one line per stage recovered.

    We hold the history's write lock, so normally no other executor is alive and every
    RUNNING row is stale. Locks on a network filesystem can fail, so a run whose
    executor still looks alive (its pid on this host, or a fresh heartbeat from another
    host) stops us instead. A runner that outlived its executor is killed here."""
    report = []
    stale = db.query("""
        SELECT s.run_id, s.stage_id, s.attempt, s.cache_key, s.pid, s.heartbeat, s.metrics_path,
               coalesce(s.metrics_offset, 0), s.log_path, s.start_time, s.gpus, r.pid, r.host, s.output_dir
        FROM stages s JOIN runs r USING (run_id) WHERE s.status = 'RUNNING'""")
    for (run_id, stage_id, attempt, key, pid, heartbeat, metrics_path, offset, log_path, start, gpus,
         executor_pid, host, output_dir) in stale:
        _refuse_if_alive(run_id, executor_pid, host, heartbeat)
        killed = _procs.kill_stale(pid, str(attempt_file(home, run_id, stage_id, attempt or 0, "spec.json")))
        if metrics_path:  # what the runner wrote after the last flush is still on disk
            _ingest_rest(db, run_id, stage_id, attempt, key, Path(metrics_path), int(offset))
        log = _procs.log_tail(Path(log_path)) if log_path else ""
        why = (f"executor died during the stage; runner pid {pid} "
               f"{'still alive, killed now' if killed else 'gone'}, last heartbeat {heartbeat:%H:%M:%S} UTC"
               if heartbeat else "executor died during the stage")
        last_metric = db.query("SELECT max(time) FROM metrics WHERE run_id = ? AND stage_id = ? AND attempt = ?",
                               [run_id, stage_id, attempt])[0][0]
        end = max([t for t in (heartbeat, last_metric) if t is not None], default=utcnow())
        wall = (end - start).total_seconds() if start else None  # up to the last sign of life
        # the runner may have completed its output just before its executor died
        status = "FINISHED" if output_dir and is_complete(output_dir) else "FAILED"
        db.update_stage(run_id, stage_id, status=status, end_time=end, wall_s=wall,
                        gpu_hours=None if wall is None else wall / 3600 * (gpus or 0),
                        error=None if status == "FINISHED" else why + ("\n--- log tail ---\n" + log if log else ""))
        report.append(f"{stage_id}: left RUNNING by run {run_id}, marked {status} ({why})")
    for (run_id,) in db.query("SELECT run_id FROM runs WHERE status IN ('RUNNING', 'SCHEDULED')"):
        db.execute("UPDATE stages SET status = 'SKIPPED', error = 'not started: the executor died' "
                   "WHERE run_id = ? AND status = 'PENDING'", [run_id])
        db.update_run(run_id, status="FAILED", end_time=utcnow(),
                      error=f"executor died; resumed by run {new_run}")
    return report


def _refuse_if_alive(run_id: str, executor_pid: int | None, host: str | None, heartbeat: Any) -> None:
    if host == os.uname().nodename:
        if executor_pid != os.getpid() and _procs.pid_alive(executor_pid) \
                and _procs.cmdline_mentions(executor_pid, "s2d"):
            raise HistoryError(f"run {run_id} is still executing here (pid {executor_pid}); stop it first")
    elif heartbeat is not None and (utcnow() - heartbeat).total_seconds() < STALE_HEARTBEAT_S:
        raise HistoryError(f"run {run_id} on {host} sent a heartbeat {heartbeat:%H:%M:%S} UTC; "
                           f"if it is dead, retry after {STALE_HEARTBEAT_S:.0f} s")


def _ingest_rest(db: HistoryWriter, run_id: str, stage_id: str, attempt: int, key: str,
                 path: Path, offset: int) -> None:
    tail = _procs.MetricTail(path, offset=offset)
    chunk = tail.read(final=True)
    while chunk:
        db.append_metrics(run_id, stage_id, attempt, key, chunk, tail.offset)
        chunk = tail.read(final=True)
