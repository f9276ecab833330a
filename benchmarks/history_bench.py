"""History store benchmark: metric ingestion rate and a per-stage aggregate query.

    .venv/bin/python -m benchmarks.history_bench [--rows 1000000] [--stages 10]

Ingestion goes through the executor's real path: runner-format JSON lines in a metrics
file per stage, read incrementally by ``MetricTail`` and appended in 50,000-line batches
by ``HistoryWriter.append_metrics`` (lines through the appender into a temp table,
parsed by DuckDB in one INSERT ... SELECT per batch, the file offset committed in the
same transaction). Targets (issue 4): at least
200,000 rows/s, and a per-stage aggregate over 1,000,000 metric rows under 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from s2d_plan.history.read import open_reader
from s2d_plan.history.store import HistoryWriter, utcnow
from s2d_plan.run.procs import MetricTail

BATCH = 50_000  # the executor's flush_rows
KEYS = ("loss", "reward", "kl", "lr")


def write_metric_files(run_dir: Path, rows: int, stages: int) -> list[Path]:
    per_stage = rows // stages
    paths = []
    t0 = 1.7e9
    for s in range(stages):
        path = run_dir / f"stage{s}.1.metrics.jsonl"
        with open(path, "w") as f:
            for i in range(per_stage):
                step, key = divmod(i, len(KEYS))
                value = None if i % 997 == 0 else math.sin(i) + s
                f.write(json.dumps({"step": step, "key": KEYS[key], "value": value, "time": t0 + i * 1e-3}) + "\n")
        paths.append(path)
    return paths


def ingest(writer: HistoryWriter, paths: list[Path]) -> int:
    total = 0
    for s, path in enumerate(paths):
        stage = f"stage{s}"
        writer.insert("stages", {"run_id": "bench", "stage_id": stage, "kind": "simulate", "status": "RUNNING",
                                 "attempt": 1, "cache_key": f"key{s}", "start_time": utcnow()})
        tail = MetricTail(path)
        buffered: list[str] = []
        while True:
            rows = tail.read(max_bytes=8 << 20)  # the executor reads what arrived since the last poll
            if not rows:
                break
            buffered.extend(rows)
            if len(buffered) >= BATCH:
                writer.append_metrics("bench", stage, 1, f"key{s}", buffered, tail.offset)
                total += len(buffered)
                buffered = []
        writer.append_metrics("bench", stage, 1, f"key{s}", buffered, tail.offset)
        total += len(buffered)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stages", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        run_dir = home / "runs" / "bench"
        run_dir.mkdir(parents=True)
        paths = write_metric_files(run_dir, args.rows, args.stages)
        writer = HistoryWriter(home)
        writer.insert("runs", {"run_id": "bench", "plan": "bench", "status": "RUNNING", "start_time": utcnow()})
        started = time.perf_counter()
        n = ingest(writer, paths)
        ingest_s = time.perf_counter() - started
        # stage0 resumed: a second attempt re-logs the second half of its steps
        lines = paths[0].read_text().splitlines()
        resumed = lines[len(lines) // 2:]
        writer.append_metrics("bench", "stage0", 2, "key0", resumed)
        started = time.perf_counter()
        writer.publish(force=True)
        snapshot_s = time.perf_counter() - started
        writer.close()

        sql = """SELECT stage_id, count(*) AS n, avg(value) AS mean, min(value) AS lo, max(value) AS hi,
                        max(step) AS last_step FROM metrics GROUP BY stage_id ORDER BY stage_id"""
        latest_sql = sql.replace("FROM metrics", "FROM metrics_latest")
        with open_reader(home) as con:
            con.execute(sql).fetchall()  # warm the file cache, as a second query would be
            timings, latest = [], []
            for _ in range(5):
                t = time.perf_counter()
                result = con.execute(sql).fetchall()
                timings.append(time.perf_counter() - t)
                t = time.perf_counter()
                con.execute(latest_sql).fetchall()
                latest.append(time.perf_counter() - t)
        assert sum(r[1] for r in result) == n + len(resumed)
        with open_reader(home) as con:
            assert con.execute("SELECT count(*) FROM metrics_latest").fetchall()[0][0] == n
    rate = n / ingest_s
    query_s = sorted(timings)[len(timings) // 2]
    print(f"ingestion: {n:,} metric rows in {ingest_s:.2f} s = {rate:,.0f} rows/s "
          f"(target >= 200,000) {'OK' if rate >= 200_000 else 'SLOW'}")
    print(f"per-stage aggregate over {n:,} rows (metrics, median of 5): {query_s * 1000:.1f} ms "
          f"(target < 300 ms) {'OK' if query_s < 0.3 else 'SLOW'}")
    print(f"  same over the metrics_latest view (one stage resumed): {sorted(latest)[2] * 1000:.1f} ms; "
          f"snapshot publish: {snapshot_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
