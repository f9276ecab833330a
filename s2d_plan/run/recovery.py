"""Recovery of what a dead executor left behind: stages still RUNNING in the history.

We hold the history's write lock, so normally no other executor is alive and every
RUNNING row is stale. Locks on a network filesystem can fail, so a run whose executor
still looks alive (its pid on this host, or a fresh heartbeat from another host) stops
us instead. A runner that outlived its executor is killed; the rest of its metrics file
is ingested; the stage is marked FAILED (or FINISHED, when its output completed just
before its executor died) and runs again as a new attempt.

An attempt that ended but whose metrics file holds more than its committed offset (its
executor could not commit the last batch: a full disk) gets the rest ingested here too,
so the next run, with space, ingests exactly the missing lines.

Cluster work outlives its executor (Slurm jobs; Ray's detached actors). Before the above,
``reattach`` takes over every such attempt whose stage is in the new run's graph with
the same cache key and is not forced: the new run continues the *same* attempt (same
job, same attempt number, its metrics file tailed from the committed offset), and the
dead run's row says where it went. Other cluster work a dead executor left is cancelled.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2d_plan.contract import is_complete
from s2d_plan.errors import HistoryError
from s2d_plan.history.store import HistoryWriter, utcnow
from s2d_plan.paths import attempt_file
from s2d_plan.run import procs as _procs
from s2d_plan.run.launchers import Launcher, Slot

STALE_HEARTBEAT_S = 60.0  # a RUNNING stage on another host counts as dead after this


def recover_stale(db: HistoryWriter, home: Path, new_run: str) -> list[str]:
    """Close what a dead executor left RUNNING and ingest metric lines a failed write left
    on disk; return one line per thing done (the writer's start-up notes first)."""
    report = list(db.notes)
    for (run_id, stage_id, attempt, key, pid, heartbeat, metrics_path, offset, log_path, start, gpus,
         executor_pid, host, output_dir) in db.stale_stages():
        _refuse_if_alive(run_id, executor_pid, host, heartbeat)
        killed = _procs.kill_stale(pid, str(attempt_file(home, run_id, stage_id, attempt or 0, "spec.json")))
        if metrics_path:  # what the runner wrote after the last flush is still on disk
            _ingest_rest(db, run_id, stage_id, attempt, key, Path(metrics_path), int(offset))
        log = _procs.log_tail(Path(log_path)) if log_path else ""
        why = (f"executor died during the stage; runner pid {pid} "
               f"{'still alive, killed now' if killed else 'gone'}, last heartbeat {heartbeat:%H:%M:%S} UTC"
               if heartbeat else "executor died during the stage")
        last_metric = db.last_metric_time(run_id, stage_id, attempt)
        end = max([t for t in (heartbeat, last_metric) if t is not None], default=utcnow())
        wall = (end - start).total_seconds() if start else None  # up to the last sign of life
        # the runner may have completed its output just before its executor died
        status = "FINISHED" if output_dir and is_complete(output_dir) else "FAILED"
        db.update_stage(run_id, stage_id, status=status, end_time=end, wall_s=wall,
                        gpu_hours=None if wall is None else wall / 3600 * (gpus or 0),
                        error=None if status == "FINISHED" else why + ("\n--- log tail ---\n" + log if log else ""))
        report.append(f"{stage_id}: left RUNNING by run {run_id}, marked {status} ({why})")
    db.close_dead_runs(new_run)
    report += _ingest_leftovers(db)
    return report


def _ingest_leftovers(db: HistoryWriter) -> list[str]:
    """Ended attempts whose metrics file grew past the committed offset."""
    report = []
    for run_id, stage_id, attempt, key, metrics_path, offset in db.query(
            "SELECT run_id, stage_id, attempt, cache_key, metrics_path, coalesce(metrics_offset, 0) FROM stages "
            "WHERE metrics_path IS NOT NULL AND status IN ('FINISHED', 'FAILED', 'KILLED')"):
        path = Path(metrics_path)
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size > offset:
            before = db.query("SELECT count(*) FROM metrics WHERE run_id = ? AND stage_id = ? AND attempt = ?",
                              [run_id, stage_id, attempt])[0][0]
            _ingest_rest(db, run_id, stage_id, attempt, key, path, int(offset))
            after = db.query("SELECT count(*) FROM metrics WHERE run_id = ? AND stage_id = ? AND attempt = ?",
                             [run_id, stage_id, attempt])[0][0]
            report.append(f"{stage_id}: ingested {after - before} metric line(s) of run {run_id} "
                          f"attempt {attempt} left on disk by a failed write")
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


@dataclass(frozen=True)
class Adopted:
    """An attempt a dead executor left running on the cluster, now the new run's."""

    run_id: str  # the dead executor's run
    attempt: int
    handle: Any  # the launcher's handle on the same job / actors
    slot: Slot
    start: dt.datetime | None
    spec_path: Path
    log_path: Path | None
    metrics_path: Path
    offset: int  # bytes of the metrics file the history already holds


def reattach(db: HistoryWriter, launcher: Launcher, home: Path, keys: dict[str, str], forced: Collection[str],
             new_run: str) -> tuple[dict[str, Adopted], list[str]]:
    """Re-attach to (or cancel) the cluster attempts dead executors left RUNNING; returns
    {stage id: Adopted} and one line per thing done."""
    adopted: dict[str, Adopted] = {}
    report = []
    for (backend, ref, run_id, stage_id, attempt, key, nodes, gpus, start, log_path, metrics_path, offset,
         executor_pid, host, heartbeat) in db.orphan_jobs():
        if backend != launcher.name:
            continue  # recover_stale marks it FAILED; another backend's work is not ours to touch
        _refuse_if_alive(run_id, executor_pid, host, heartbeat)
        slot = Slot(nodes=nodes, gpus_per_node=gpus or 0)
        wanted = keys.get(stage_id) == key and stage_id not in forced and stage_id not in adopted
        handle = launcher.attach(ref, slot) if wanted and metrics_path else None
        if handle is None:
            if launcher.cancel(ref):
                report.append(f"{stage_id}: cancelled {backend} job {ref} left by a dead executor")
            continue
        adopted[stage_id] = Adopted(run_id, attempt, handle, slot, start,
                                    attempt_file(home, run_id, stage_id, attempt, "spec.json"),
                                    Path(log_path) if log_path else None, Path(metrics_path), int(offset))
        why = f"executor died during the stage; its {backend} job {ref} ran on and run {new_run} re-attached to it"
        # the metrics file is the new run's row's now: no leftover ingestion under the dead one
        db.update_stage(run_id, stage_id, status="FAILED", end_time=utcnow(), error=why, metrics_path=None)
        db.end_placements(run_id, stage_id, attempt, "REATTACHED", f"re-attached by run {new_run}")
        report.append(f"{stage_id}: re-attached to {backend} job {ref} (attempt {attempt}) left running by run {run_id}")
    return adopted, report
