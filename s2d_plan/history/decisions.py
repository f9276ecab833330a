"""The decision trail of adaptive execution: one ``decisions`` row per decision, written
between runs (never while an executor holds the history), read back to resume a session
and to show it.

    >>> trail("/nonexistent", "ad-0")
    []
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2d_plan.errors import HistoryError
from s2d_plan.history.read import query
from s2d_plan.history.store import HistoryWriter, utcnow
from s2d_plan.paths import db_path

COLUMNS = ("session", "seq", "time", "plan_hash", "kind", "run_id", "candidates", "evidence", "chosen",
           "predicted_median", "predicted_low", "predicted_high", "why")


@dataclass(frozen=True)
class Decision:
    kind: str  # candidates, round (its steps, decided before it runs), pilot, prune, choose, finished
    why: str
    run_id: str | None = None
    candidates: list[dict[str, Any]] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    chosen: str | None = None
    predicted: tuple[float, float, float] | None = None  # median, low, high
    seq: int = 0
    time: Any = None


def record(home: Path, session: str, plan_hash: str, d: Decision) -> Decision:
    """Append ``d`` as the session's next row; returns it with its sequence number."""
    med, low, high = d.predicted or (None, None, None)
    writer = HistoryWriter(Path(home))
    try:  # the sequence number is chosen under the write lock: no other writer can take it
        seq = writer.query("SELECT coalesce(max(seq), 0) + 1 FROM decisions WHERE session = ?", [session])[0][0]
        row = (session, seq, utcnow(), plan_hash, d.kind, d.run_id,
               None if d.candidates is None else json.dumps(d.candidates, default=float),
               json.dumps(d.evidence, default=float), d.chosen, med, low, high, d.why)
        writer.append_rows("decisions", COLUMNS, [row])
    finally:
        writer.close()
    return Decision(d.kind, d.why, d.run_id, d.candidates, d.evidence, d.chosen, d.predicted, seq, row[2])


def new_session_id(plan_hash: str) -> str:
    """A fresh session id: the plan, the second, and a random part (two in one second differ)."""
    return f"ad-{plan_hash[:8]}-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"


def claim(home: str | Path, plan_hash: str):
    """Hold this plan's adaptive session on ``home`` until the returned file is closed (or
    the process dies); a second executor is refused here, before it writes anything."""
    Path(home).mkdir(parents=True, exist_ok=True)
    f = open(Path(home) / f".adaptive-{plan_hash[:16]}.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise HistoryError(f"another adaptive executor (pid {pid}) is running this plan's session on {home}; "
                           f"wait for it to finish or stop it, then resume") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def trail(home: str | Path, session: str) -> list[Decision]:
    """The session's decisions in order ([] when there is no history yet)."""
    if not db_path(Path(home)).exists():
        return []
    try:
        _, rows = query("SELECT kind, why, run_id, candidates, evidence, chosen, predicted_median, predicted_low, "
                        "predicted_high, seq, time FROM decisions WHERE session = ? ORDER BY seq", home, [session])
    except HistoryError:
        return []
    out = []
    for kind, why, run_id, cands, ev, chosen, med, low, high, seq, t in rows:
        pred = None if med is None else (med, low, high)
        out.append(Decision(kind, why, run_id, None if cands is None else json.loads(cands),
                            json.loads(ev) if ev else {}, chosen, pred, seq, t))
    return out


def open_session(home: str | Path, plan_hash: str) -> str | None:
    """The newest session of this plan that has not finished, if any."""
    if not db_path(Path(home)).exists():
        return None
    try:
        _, rows = query("""SELECT session FROM decisions WHERE plan_hash = ? GROUP BY session
                           HAVING count(*) FILTER (kind = 'finished') = 0 ORDER BY max(time) DESC LIMIT 1""",
                        home, [plan_hash])
    except HistoryError:
        return None
    return rows[0][0] if rows else None


def session_of_run(home: str | Path, run_id: str) -> str | None:
    """The adaptive session a run belongs to (a pilot or the final run), if any."""
    try:
        _, rows = query("SELECT json_extract_string(graph, '$.meta.adaptive.session') FROM runs WHERE run_id = ?",
                        home, [run_id])
    except HistoryError:
        return None
    return rows[0][0] if rows and rows[0][0] else None
