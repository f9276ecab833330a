"""Attacks on the history, replayed (issue 13): the read-only door stays read-only, a
deleted or damaged file is restored or refused (never replaced by an empty one), stale
snapshots are noticed, temporary files do not leak, `history --out/--check` work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import sim_stage

from s2d_plan.errors import HistoryError
from s2d_plan.history import files
from s2d_plan.history.read import open_reader, query
from s2d_plan.history.snapshots import open_composite
from s2d_plan.history.store import HistoryWriter


def counts(home: Path) -> tuple[int, int]:
    """(runs, metric rows), read straight from the main file."""
    con = duckdb.connect(str(home / "history.duckdb"), read_only=True)
    try:
        return con.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM metrics)").fetchall()[0]
    finally:
        con.close()


def sizes(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in home.iterdir() if p.is_file()}


@pytest.fixture
def two_runs(write_graph, cli, s2d_home) -> Path:
    for i in range(2):
        proc = cli("execute", str(write_graph([sim_stage(f"s{i}", steps=20)], name=f"g{i}.json")))
        assert proc.returncode == 0, proc.stderr
    return s2d_home


def attacks(home: Path, victim: Path) -> list[str]:
    h = home / "history.duckdb"
    return [
        f"COPY (SELECT 'gone') TO '{h}' (FORMAT csv)",
        f"COPY (SELECT 'echo pwned') TO '{victim}' (FORMAT csv, HEADER false)",
        f"COPY runs TO '{victim}'",
        f"EXPORT DATABASE '{victim.parent / 'exported'}'",
        "SET autoinstall_known_extensions=true; SET autoload_known_extensions=true; "
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        "SET custom_extension_repository='http://example.com/ext'",
        "SET enable_external_access=true",
        "INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL httpfs FROM 'http://example.com'",
        "EXPLAIN ANALYZE INSTALL httpfs", "EXPLAIN ANALYZE LOAD httpfs",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{victim}'",
        f"ATTACH '{victim.parent / 'other.duckdb'}' AS other",
        f"SELECT 1; COPY (SELECT 1) TO '{victim}'",
        "DELETE FROM metrics", "DROP TABLE runs", "CHECKPOINT; DELETE FROM runs",
        f"PRAGMA profiling_output='{victim}'", "PRAGMA enable_profiling='json'", "CALL enable_logging()",
        "PRAGMA enable_checkpoint_on_shutdown",
    ]


def test_every_attack_is_refused_and_changes_nothing(two_runs, cli, tmp_path):
    home = two_runs
    victim = tmp_path / "victim.sh"
    before, before_sizes = counts(home), sizes(home)
    assert before[0] == 2 and before[1] == 80
    for sql in attacks(home, victim):
        proc = cli("history", sql)
        assert proc.returncode == 2, (sql, proc.stdout)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, (sql, proc.stderr)
        assert "read-only" in proc.stderr or "reads only its own tables" in proc.stderr, (sql, proc.stderr)
        assert counts(home) == before and sizes(home) == before_sizes, sql
    assert not victim.exists() and not (tmp_path / "exported").exists() and not (tmp_path / "other.duckdb").exists()
    # and the next execute still works on the intact file
    assert cli("history", "SELECT count(*) FROM runs", "--json").stdout.strip() == '[{"count_star()": 2}]'


def test_the_connection_itself_is_locked(two_runs, tmp_path):
    """Past the allow-list, DuckDB refuses too: both readers (main file and composite)."""
    victim = tmp_path / "v.csv"
    HistoryWriter(two_runs).close()  # publishes the snapshot
    composite = open_composite(two_runs)
    assert composite is not None
    for con in (files.connect_locked(two_runs / "history.duckdb"), composite):
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(2,)]
        for sql in (f"COPY (SELECT 1) TO '{victim}'", "SET enable_external_access = true",
                    "SET autoinstall_known_extensions = true", "INSTALL httpfs", "LOAD httpfs",
                    "SELECT * FROM read_csv('/etc/hostname')", f"ATTACH '{tmp_path / 'x.duckdb'}'"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        con.close()
    assert not victim.exists() and not (tmp_path / "x.duckdb").exists()


def test_out_writes_atomically_and_never_over_the_history(two_runs, cli, tmp_path):
    out = tmp_path / "runs.json"
    proc = cli("history", "SELECT run_id, status FROM runs ORDER BY run_id", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in json.loads(out.read_text())] == ["FINISHED", "FINISHED"]
    assert "2 rows written" in proc.stderr and proc.stdout == ""
    csv_out = tmp_path / "m.csv"
    assert cli("history", "SELECT count(*) AS n FROM metrics", "--out", str(csv_out)).returncode == 0
    assert csv_out.read_text() == "n\n80\n"
    before = sizes(two_runs)
    for target in ("history.duckdb", "history.snapshot.duckdb", "history.duckdb.wal"):
        bad = cli("history", "SELECT 1", "--out", str(two_runs / target))
        assert bad.returncode == 2 and "history's own files" in bad.stderr
    assert sizes(two_runs) == before and counts(two_runs) == (2, 80)
    assert not list(tmp_path.glob(".*.tmp"))


def test_deleted_main_file_is_read_from_and_restored_from_its_snapshot(two_runs, cli, write_graph):
    (two_runs / "history.duckdb").unlink()
    runs = cli("runs")
    assert runs.returncode == 0 and "no runs yet" not in runs.stdout
    assert "is missing; reading its snapshot" in runs.stderr
    proc = cli("execute", str(write_graph([sim_stage("third", steps=5)], name="g3.json")))
    assert proc.returncode == 0, proc.stderr
    assert "was missing; restored it from history.snapshot.duckdb" in proc.stdout + proc.stderr
    assert counts(two_runs) == (3, 90)  # nothing lost, nothing published over it


def test_deleted_main_file_with_a_broken_snapshot_is_refused(two_runs, cli, write_graph):
    (two_runs / "history.duckdb").unlink()
    (two_runs / "history.snapshot.duckdb").write_bytes(b"garbage" * 100)
    proc = cli("execute", str(write_graph([sim_stage("x", steps=2)])))
    assert proc.returncode == 2 and "is missing and its snapshot" in proc.stderr and "Traceback" not in proc.stderr
    assert not (two_runs / "history.duckdb").exists()  # no empty history made over it
    assert (two_runs / "history.snapshot.duckdb").read_bytes() == b"garbage" * 100


@pytest.mark.parametrize("damage", ["truncate_half", "overwrite"])
def test_a_damaged_main_file_is_named_with_how_to_restore(damage, two_runs, cli, write_graph):
    main = two_runs / "history.duckdb"
    if damage == "truncate_half":
        os.truncate(main, main.stat().st_size // 2)
    else:
        main.write_text("gone\n")
    for args in (["history", "SELECT count(*) AS n FROM runs", "--json"], ["runs"],
                 ["execute", str(write_graph([sim_stage("x", steps=2)]))]):
        proc = cli(*args)
        if damage == "truncate_half" and args[0] != "execute" and proc.returncode == 0:
            # a reader whose blocks lie in the intact half gets the true answer; the
            # executor, which checks the file on open, must not go on
            assert proc.stdout.strip() == '[{"n": 2}]' or "FINISHED" in proc.stdout
            continue
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert f"the history file {main} is damaged" in proc.stderr and "mv " in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not files.leftover_temp_files(two_runs)
    # the way out the message gives: move it aside, then --check restores from the snapshot
    main.rename(main.with_name("history.duckdb.damaged"))
    check = cli("history", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "restored it from history.snapshot.duckdb" in check.stdout
    assert counts(two_runs) == (2, 80)


def test_an_empty_or_corrupt_snapshot_falls_back_to_the_main_file(two_runs, cli):
    assert files.snapshot_is_current(two_runs)
    (two_runs / "history.snapshot.duckdb").write_bytes(b"")
    proc = cli("history", "SELECT count(*) AS n FROM metrics", "--json", timeout=8)  # no 10 s wait
    assert proc.returncode == 0 and json.loads(proc.stdout) == [{"n": 80}], proc.stderr


def test_clean_marker_only_after_a_successful_publish(write_graph, cli, s2d_home):
    assert cli("execute", str(write_graph([sim_stage("a", steps=3)], name="a.json"))).returncode == 0
    snap = s2d_home / "history.snapshot.duckdb"
    snap.unlink()
    snap.mkdir()  # every publish now fails (a rename over a non-empty directory)
    (snap / "block").write_text("x")
    proc = cli("execute", str(write_graph([sim_stage("b", steps=4)], name="b.json")))
    assert proc.returncode == 0 and "could not publish the history snapshot" in proc.stderr
    assert not (s2d_home / files.CLEAN_MARKER).exists()
    assert not files.leftover_temp_files(s2d_home)
    # readers see the main file: both runs, every row
    assert json.loads(cli("history", "SELECT count(*) AS n FROM metrics", "--json").stdout) == [{"n": 14}]
    # a marker that no longer describes the main file is not trusted either
    (s2d_home / files.CLEAN_MARKER).write_text(json.dumps({"size": 1, "mtime_ns": 1}))
    assert not files.snapshot_is_current(s2d_home)


def test_a_stale_snapshot_under_a_running_writer_is_called_stale(two_runs):
    writer = HistoryWriter(two_runs)
    try:
        writer.begin_live("r")
        old = two_runs / "history.snapshot.duckdb"
        os.utime(old, (1, 1))  # as if publishing stopped long ago while writes went on
        code = ("import warnings, sys; from s2d_plan.history.read import query; "
                f"warnings.simplefilter('always'); print(query('SELECT count(*) FROM runs', {str(two_runs)!r})[1])")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "[(2,)]" in proc.stdout and "older than the history's last write" in proc.stderr
    finally:
        writer.close()


def test_a_reader_holding_the_main_file_is_named_not_blamed_on_an_executor(two_runs):
    holder = duckdb.connect(str(two_runs / "history.duckdb"), read_only=True)
    try:
        with pytest.raises(HistoryError) as err:
            HistoryWriter(two_runs, lock_timeout_s=0.2)
        text = str(err.value)
        # DuckDB lets one process hold a file once; in-process it reports a config clash,
        # so the other-process case is covered in test_history.py
        assert "another `s2d-plan execute`" not in text
    finally:
        holder.close()
    code = ("import duckdb, time, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); time.sleep(30)")
    reader = subprocess.Popen([sys.executable, "-c", code, str(two_runs / "history.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with pytest.raises(HistoryError) as err:
            HistoryWriter(two_runs, lock_timeout_s=0.3)
        assert f"held by process {reader.pid} (" in str(err.value)
        assert "a reader holding the main file blocks a writer" in str(err.value)
        assert "another `s2d-plan execute`" not in str(err.value)
    finally:
        reader.kill()
        reader.wait()


def test_temp_files_are_removed_at_start_up(two_runs, cli, write_graph):
    for name in (".history.snapshot.duckdb.4242.tmp", ".history.snapshot.duckdb.4242.tmp.wal",
                 ".history.live.duckdb.77.tmp"):
        (two_runs / name).write_bytes(b"x" * 1000)
    assert len(files.leftover_temp_files(two_runs)) == 3
    proc = cli("execute", str(write_graph([sim_stage("x", steps=2)])))
    assert proc.returncode == 0 and "removed 3 temporary file(s)" in proc.stdout + proc.stderr
    assert files.leftover_temp_files(two_runs) == []


def test_check_repairs_rows_offsets_and_temp_files_without_loss(two_runs, cli):
    writer = HistoryWriter(two_runs)
    try:  # damage it the ways a crash could: rows lost, rows twice, an offset behind
        writer.execute("DELETE FROM metrics WHERE stage_id = 's0' AND step >= 15")
        writer.execute("INSERT INTO metrics SELECT * FROM metrics WHERE stage_id = 's1' AND step < 3")
        writer.execute("UPDATE stages SET metrics_offset = 10 WHERE stage_id = 's1'")
    finally:
        writer.close()
    (two_runs / ".history.live.duckdb.99.tmp").write_text("x")
    assert counts(two_runs) == (2, 80 - 10 + 6)
    proc = cli("history", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("repaired:") == 2 and "s0 attempt 1: 30 rows for 40 metric lines" in proc.stdout
    assert "removed 1 temporary file(s)" in proc.stdout and proc.stdout.rstrip().endswith("history OK")
    assert counts(two_runs) == (2, 80)
    assert query("SELECT count(DISTINCT (stage_id, step, key)) FROM metrics", two_runs)[1] == [(80,)]
    again = cli("history", "--check")
    assert again.returncode == 0 and "repaired" not in again.stdout and "metric rows match their files" in again.stdout


def test_user_sql_in_the_executors_process_never_gets_the_writers_connection(two_runs, tmp_path):
    writer = HistoryWriter(two_runs)
    try:
        writer.begin_live("r")
        with open_reader(two_runs) as shared:  # the allocator's own reads share it ...
            assert shared.execute("SELECT count(*) FROM runs").fetchall() == [(2,)]
        with pytest.raises(HistoryError, match="read-only"):  # ... user SQL does not
            query(f"COPY runs TO '{tmp_path / 'x.csv'}'", two_runs)
        with pytest.raises(HistoryError):
            query(f"SELECT * FROM read_csv('{two_runs / 'history.clean'}')", two_runs)
        assert query("SELECT count(*) FROM runs", two_runs)[1] == [(2,)]
    finally:
        writer.close()
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("sql", ["SELECT content FROM read_text('.tmp/secret')", "SELECT * FROM glob('.tmp/*')"])
def test_a_live_reader_cannot_read_the_cwds_tmp_directory(two_runs, tmp_path, monkeypatch, sql):
    cwd = tmp_path / "cwd"
    (cwd / ".tmp").mkdir(parents=True)
    (cwd / ".tmp" / "secret").write_text("password\n")
    monkeypatch.chdir(cwd)
    writer = HistoryWriter(two_runs)
    try:
        writer.begin_live("r")
        try:
            rows = query(sql, two_runs)[1]
        except HistoryError as exc:
            assert "files, the network and extensions are off" in str(exc)
        else:
            assert rows == [], rows  # nothing of the cwd's .tmp is visible
    finally:
        writer.close()


def cli_in_process(*args: str):
    from typer.testing import CliRunner

    from s2d_plan.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_history_streams_and_caps_a_huge_result(two_runs):
    result = cli_in_process("history", "SELECT * FROM range(200000000)", "--csv", "--home", str(two_runs))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 10_001  # the header and the first 10,000 rows
    assert "10000 rows shown" in result.stderr and "--max-rows" in result.stderr
    small = cli_in_process("history", "SELECT * FROM range(30)", "--csv", "--max-rows", "5", "--home", str(two_runs))
    assert small.stdout.splitlines() == ["range", "0", "1", "2", "3", "4"] and "5 rows shown" in small.stderr
    whole = cli_in_process("history", "SELECT * FROM range(30)", "--csv", "--max-rows", "0", "--home", str(two_runs))
    assert whole.stdout.count("\n") == 31 and "rows shown" not in whole.stderr


def test_out_refuses_every_path_inside_the_home(two_runs, tmp_path):
    stage_dir = next((two_runs / "stages").iterdir())
    link = tmp_path / "into-home"
    link.symlink_to(stage_dir)
    targets = [stage_dir / "COMPLETE", stage_dir / "new.csv", next((two_runs / "runs").rglob("*.jsonl")),
               link / "COMPLETE", link / "x.csv", two_runs / "calibration.json"]
    before = {p: p.read_bytes() for p in two_runs.rglob("*") if p.is_file()}
    for target in targets:
        result = cli_in_process("history", "SELECT 1 AS x", "--out", str(target), "--home", str(two_runs))
        assert result.exit_code == 2, (target, result.output)
        assert "inside the home" in result.stderr and "Traceback" not in result.output
    assert {p: p.read_bytes() for p in two_runs.rglob("*") if p.is_file()} == before
    assert not (stage_dir / "new.csv").exists()
