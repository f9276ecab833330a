"""``s2d-plan history --check``: the history's invariants, verified and repaired.

The metrics files on disk are the source of every metric row: a runner appends JSON
lines, the executor ingests them and commits, with each batch, how far into the file it
reached (``stages.metrics_offset``). So for every stage attempt that has ended:

- its rows in ``metrics`` are exactly the metric lines of its file (none lost, none twice);
- its offset is the file's size (nothing left to ingest).

Where either fails, the attempt's rows are replaced by its whole file in one
transaction, which loses nothing (the file holds every row) and drops duplicates.
Stages left RUNNING and temporary files are the executor's start-up business
(``s2d_plan.run.recovery``, ``HistoryWriter``); ``s2d_plan.api.check_history`` runs
them all under the write lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from s2d_plan.history.store import HistoryWriter

_ENDED = ("FINISHED", "FAILED", "KILLED")


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)  # one per finding or repair
    problems: int = 0  # found, repaired or not
    unrepaired: int = 0

    @property
    def ok(self) -> bool:
        return self.unrepaired == 0


def read_lines(path: Path) -> tuple[list[str], int]:
    """Every line of a metrics file (a last line without newline included) and its size."""
    data = path.read_bytes()
    return data.decode("utf-8", "replace").splitlines(), len(data)


def check_metrics(db: HistoryWriter, report: CheckReport, repair: bool = True) -> None:
    """Rows vs lines and offset vs size for every ended stage attempt with a metrics file."""
    attempts = db.query(f"""
        SELECT s.run_id, s.stage_id, s.attempt, s.cache_key, s.metrics_path, coalesce(s.metrics_offset, 0),
               (SELECT count(*) FROM metrics m WHERE m.run_id = s.run_id AND m.stage_id = s.stage_id
                                                 AND m.attempt = s.attempt)
        FROM stages s WHERE s.metrics_path IS NOT NULL AND s.status IN {_ENDED}
        ORDER BY s.run_id, s.stage_id""")
    checked = 0
    for run_id, stage_id, attempt, key, metrics_path, offset, rows in attempts:
        path = Path(metrics_path)
        if not path.exists():
            if rows:
                report.lines.append(f"note: {run_id} {stage_id} attempt {attempt}: metrics file {path} is gone "
                                    f"({rows} rows kept in the history)")
            continue
        lines, size = read_lines(path)
        expected = db.count_metric_lines(lines)
        checked += 1
        if rows == expected and offset == size:
            continue
        report.problems += 1
        what = (f"{run_id} {stage_id} attempt {attempt}: {rows} rows for {expected} metric lines, "
                f"offset {offset} of {size} bytes")
        if repair:
            db.reingest_attempt(run_id, stage_id, attempt, key, lines, size)
            report.lines.append(f"repaired: {what}; re-ingested the file ({expected} rows)")
        else:
            report.unrepaired += 1
            report.lines.append(f"problem: {what}")
    report.lines.append(f"checked {checked} stage attempt(s): metric rows match their files"
                        if not report.problems else f"checked {checked} stage attempt(s)")
