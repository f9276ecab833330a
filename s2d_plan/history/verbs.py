"""The history's verbs: what the executor records about runs, stages, placements and
their outputs, as methods of the single writer (``HistoryWriter`` mixes them in). Each
is one statement or one appender batch; SQL lives here and in ``store``, never in the
executor."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Sequence

ARTIFACT_COLUMNS = ("run_id", "stage_id", "name", "uri", "sha256", "bytes", "attempt", "cache_key", "time")


def utcnow() -> dt.datetime:
    """Naive UTC: every TIMESTAMP column of the history is UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class RunRecords:
    """Needs ``insert``, ``execute``, ``update_stage``, ``update_run``, ``query`` and
    ``append_rows`` (the writer's primitives)."""

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
