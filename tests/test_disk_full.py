"""A full disk mid-run: the run stops with one line, no metric row is lost or doubled,
and the next run (with space) ingests exactly the lines the failed one could not commit.

The real thing where the tests may mount a small tmpfs (root); everywhere, the same
failure injected at the DuckDB layer (a COMMIT that fails with "No space left on device").
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pytest
from conftest import REPO, cli_env, sim_stage, wait_for

from s2d_plan.errors import HistoryError
from s2d_plan.graph import load_graph
from s2d_plan.history import store
from s2d_plan.run.executor import execute_graph
from s2d_plan.run.progress import PlainDisplay

KEPT = re.compile(r"^error: disk full at (\S+): run KILLED, (\d+) metric lines kept on disk for the next run to ingest")


def metric_lines(path: Path) -> int:
    n = 0
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue  # a line torn by the full disk is not a metric
        n += isinstance(d, dict) and d.get("key") is not None and isinstance(d.get("step"), int)
    return n


def rows_vs_lines(home: Path) -> list[tuple[str, int, int]]:
    """(attempt file, metric rows in the history, metric lines in the file) for every attempt."""
    con = duckdb.connect(str(home / "history.duckdb"), read_only=True)
    try:
        out = []
        for path in sorted((home / "runs").glob("*/*.metrics.jsonl")):
            stage, attempt = path.name.split(".")[:2]
            rows = con.execute("SELECT count(*) FROM metrics WHERE run_id = ? AND stage_id = ? AND attempt = ?",
                               [path.parent.name, stage, int(attempt)]).fetchall()[0][0]
            out.append((f"{path.parent.name}/{path.name}", rows, metric_lines(path)))
        return out
    finally:
        con.close()


def graph_file(write_graph, steps: int) -> Path:
    return write_graph([sim_stage(s, steps=steps, extra_keys=10, sleep_s=0.002, resources={"gpus": 0})
                        for s in ("left", "right")])


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the injected failure below covers the logic")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path, name: str = "filler", limit: int | None = None) -> Path:
    """Write zeros into ``directory`` until it is full (or ``limit`` bytes are written).
    On a busy machine the run may have filled the disk itself first: that is full too."""
    filler, written = directory / name, 0
    try:
        with open(filler, "wb") as f:
            while limit is None or written < limit:
                f.write(b"\0" * (1 << 16))
                f.flush()
                written += 1 << 16
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    return filler


def test_a_real_full_disk_mid_run_loses_nothing(small_fs, write_graph):
    home = small_fs / "home"
    graph = graph_file(write_graph, steps=2000)
    ballast = fill(small_fs, "ballast", limit=24 << 20)  # freed with the filler: room for the re-run
    proc = subprocess.Popen([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home), cwd=REPO)
    try:
        first = wait_for(lambda: next((home / "runs").glob("*/left.1.metrics.jsonl"), None)
                         if (home / "runs").exists() else None)
        wait_for(lambda: first.stat().st_size > 200_000)
        filler = fill(small_fs)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err
    found = KEPT.search(next(ln for ln in err.splitlines() if ln.startswith("error:")))
    assert found and found.group(1) == str(home / "history.duckdb"), err
    filler.unlink(missing_ok=True)  # space again
    ballast.unlink()

    again = subprocess.run([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], text=True,
                           capture_output=True, env=cli_env(home), cwd=REPO, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    table = rows_vs_lines(home)
    assert len(table) >= 4 and all(rows == lines for _, rows, lines in table), table  # per stage attempt
    assert not list(home.glob(".history*.tmp*"))


class _FullDiskAfter:
    """The writer's connection, whose COMMITs fail with ENOSPC after ``ok`` of them."""

    def __init__(self, con, ok: int):
        self._con, self._ok = con, ok

    def execute(self, sql, *args, **kwargs):
        if sql == "COMMIT":
            if self._ok <= 0:
                self._con.execute("ROLLBACK")  # what DuckDB does to a commit that cannot be written
                raise duckdb.IOException('Could not write file "history.duckdb.wal": No space left on device')
            self._ok -= 1
        return self._con.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_an_injected_full_disk_keeps_every_line_for_the_next_run(write_graph, s2d_home, monkeypatch):
    graph = load_graph(graph_file(write_graph, steps=400))
    real_init = store.HistoryWriter.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.con = _FullDiskAfter(self.con, ok=3)

    monkeypatch.setattr(store.HistoryWriter, "__init__", init)
    with pytest.raises(HistoryError) as err:
        execute_graph(graph, s2d_home, display=PlainDisplay(), flush_rows=500, flush_s=0.05,
                      run_id="full-" + uuid.uuid4().hex[:4])
    found = KEPT.search("error: " + str(err.value))
    assert found, str(err.value)
    kept = int(found.group(2))
    committed = sum(rows for _, rows, _ in rows_vs_lines(s2d_home))
    on_disk = sum(lines for _, _, lines in rows_vs_lines(s2d_home))
    assert kept == on_disk - committed > 0  # what the message says is what is missing

    monkeypatch.setattr(store.HistoryWriter, "__init__", real_init)
    result = execute_graph(graph, s2d_home, display=PlainDisplay())
    assert result.exit_code == 0
    table = rows_vs_lines(s2d_home)
    assert all(rows == lines for _, rows, lines in table), table
    con = duckdb.connect(str(s2d_home / "history.duckdb"), read_only=True)
    dupes = con.execute("SELECT count(*) - count(DISTINCT (run_id, stage_id, attempt, step, key)) FROM metrics")
    assert dupes.fetchall() == [(0,)]
    con.close()
