"""The history store and its CLI: `history`, `runs`, `show`, read-only, migrations."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from conftest import sim_stage

from s2d_plan.errors import HistoryError
from s2d_plan.graph import load_graph
from s2d_plan.history.migrations import LATEST
from s2d_plan.history.read import load_evidence, open_reader, query
from s2d_plan.history.store import HistoryWriter
from s2d_plan.run.executor import execute_graph
from s2d_plan.run.progress import PlainDisplay

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def finished_run(write_graph, s2d_home) -> str:
    graph = write_graph([sim_stage("teacher", steps=4, estimated={"gpu_hours": 0.5}),
                         sim_stage("student", ("teacher",), policy="@teacher", steps=3, nan_at_step=2)],
                        plan="demo")
    return execute_graph(load_graph(graph), s2d_home, display=PlainDisplay()).run_id


def test_json_csv_and_table_outputs(finished_run, cli):
    q = "SELECT stage_id, status, est_gpu_hours, start_time FROM stages ORDER BY stage_id"
    as_json = json.loads(cli("history", q, "--json").stdout)
    assert [r["stage_id"] for r in as_json] == ["student", "teacher"]
    assert set(as_json[0]) == {"stage_id", "status", "est_gpu_hours", "start_time"}
    assert as_json[1]["est_gpu_hours"] == 0.5 and "T" in as_json[1]["start_time"]
    as_csv = list(csv.DictReader(io.StringIO(cli("history", q, "--csv").stdout)))
    assert as_csv[1]["status"] == "FINISHED"
    assert cli("history", q).stdout == cli("history", q, "--csv").stdout  # not a terminal: CSV
    table = cli("history", q, "--table").stdout.splitlines()
    assert table[0].split() == ["stage_id", "status", "est_gpu_hours", "start_time"] and table[-1] == "(2 rows)"


def test_null_values_and_stdin_sql(finished_run, cli):
    out = cli("history", "-", "--json", input="SELECT step, key, value FROM metrics_latest "
              "WHERE stage_id = 'student' AND step = 2 ORDER BY key").stdout
    assert json.loads(out) == [{"step": 2, "key": "loss", "value": None}, {"step": 2, "key": "reward", "value": None}]


@pytest.mark.parametrize("sql, message", [
    ("DELETE FROM runs", "read-only"), ("DROP TABLE metrics", "read-only"),
    ("SELEC 1", "Parser Error"), ("SELECT nope FROM runs", "Binder Error"), ("", "empty SQL")])
def test_bad_or_writing_sql_exits_2_and_changes_nothing(finished_run, cli, s2d_home, sql, message):
    proc = cli("history", sql)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert query("SELECT count(*) FROM runs", s2d_home)[1] == [(1,)]


def test_runs_and_show(finished_run, cli):
    runs = cli("runs")
    assert runs.returncode == 0 and finished_run in runs.stdout and "FINISHED" in runs.stdout
    show = cli("show", finished_run[:15])
    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    assert lines[0].startswith(f"run {finished_run}  plan demo  FINISHED")
    teacher = next(line for line in lines if line.startswith("teacher"))
    assert "FINISHED" in teacher and "0.5" in teacher and "loss=" in teacher
    assert "loss=null" in next(line for line in lines if line.startswith("student"))
    missing = cli("show", "nope")
    assert missing.returncode == 2 and "no run matches" in missing.stderr


def test_every_row_printing_command_takes_the_same_output_options(finished_run, cli):
    runs = json.loads(cli("runs", "--json").stdout)
    assert [r["run_id"] for r in runs] == [finished_run] and runs[0]["status"] == "FINISHED"
    show = cli("show", finished_run, "--csv").stdout.splitlines()
    assert show[0].startswith("stage,kind,status,attempt") and {r.split(",")[0] for r in show[1:]} == {"teacher", "student"}
    rec = cli("recommend", str(ROOT / "plans" / "budget.yaml"), "--csv", "--trials", "10")
    rows = rec.stdout.splitlines()
    assert rec.returncode == 0 and rows[0].startswith("structure,role,predicted,low,high,"), rec.stderr
    assert rows[1].split(",")[1] == "recommended" and any(",baseline," in r for r in rows)
    both = cli("runs", "--csv", "--json")
    assert both.returncode == 2 and "choose one of --table, --csv, --json" in both.stderr


def test_no_history_is_a_clear_error(cli, s2d_home):
    proc = cli("history", "SELECT 1")
    assert proc.returncode == 2 and "no history at" in proc.stderr
    runs = cli("runs")
    assert runs.returncode == 0 and runs.stdout.startswith("no runs yet")
    assert load_evidence(s2d_home, "any/model") == []


def test_migrations_are_numbered_and_applied_once(s2d_home):
    for _ in range(2):
        HistoryWriter(s2d_home).close()
    with open_reader(s2d_home) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(v,) for v in range(1, LATEST + 1)]


def test_a_reader_in_the_writers_process_reads_what_it_published(s2d_home):
    """No process-wide writer registry: a reader beside the writer reads the published
    copies, exactly like a reader in another process."""
    writer = HistoryWriter(s2d_home)
    try:
        writer.append_rows("evidence", ("model", "source", "prompt_index", "samples", "correct", "time"),
                           [("m", "s", 0, 4, 1, None)])
        assert writer.publish(force=True)
        assert load_evidence(s2d_home, "m") == [(4, 1)]  # same process: no configuration error
    finally:
        writer.close()
    assert load_evidence(s2d_home, "m", "s") == [(4, 1)]


def test_second_writer_gets_a_clear_error(s2d_home, tmp_path):
    import subprocess
    import sys

    writer = HistoryWriter(s2d_home)
    try:
        code = ("from pathlib import Path; from s2d_plan.history.store import HistoryWriter; "
                f"HistoryWriter(Path({str(s2d_home)!r}), lock_timeout_s=0.3)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        # it names who holds the lock (this test process), not a guess
        assert proc.returncode != 0 and f"held by process {os.getpid()} (" in proc.stderr
    finally:
        writer.close()


def test_query_errors_are_history_errors(finished_run, s2d_home):
    with pytest.raises(HistoryError, match="read-only"):
        query("INSERT INTO runs (run_id) VALUES ('x')", s2d_home)
    assert isinstance(Path(s2d_home / "history.snapshot.duckdb"), Path)


def test_a_key_repeated_at_a_step_is_one_row_the_last_value(s2d_home):
    """TRL logs ``epoch`` twice at the last step: ``metrics`` keeps one row per
    (run, stage, attempt, step, key), the last value, also across flush batches."""
    writer = HistoryWriter(s2d_home)

    def line(step: int, key: str, value: float) -> str:
        return json.dumps({"step": step, "key": key, "value": value})

    writer.append_metrics("r", "s", 1, "k", [line(5, "epoch", 0.9), line(5, "loss", 1.0), line(5, "epoch", 1.0)])
    writer.append_metrics("r", "s", 1, "k", [line(5, "loss", 0.5), line(6, "loss", 0.4)])
    writer.append_metrics("r", "s", 2, "k", [line(5, "loss", 0.7)])
    rows = writer.query("SELECT attempt, step, key, value FROM metrics ORDER BY ALL")
    assert rows == [(1, 5, "epoch", 1.0), (1, 5, "loss", 0.5), (1, 6, "loss", 0.4), (2, 5, "loss", 0.7)]
    assert writer.count_metric_lines([line(5, "epoch", 0.9), line(5, "epoch", 1.0)]) == 1
    writer.close()
