"""The executor on real subprocesses (the `simulate` runner) and a real DuckDB file."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from conftest import sim_stage, wait_for

from s2d_plan.graph import load_graph
from s2d_plan.history.read import load_evidence, open_reader
from s2d_plan.run.executor import execute_graph
from s2d_plan.run.identity import cache_keys
from s2d_plan.run.progress import PlainDisplay


def run(graph_path: Path, home: Path, **kw):
    return execute_graph(load_graph(graph_path), home, display=PlainDisplay(every_s=1e9), **kw)


def rows(home: Path, sql: str, params=None) -> list[tuple]:
    with open_reader(home) as con:
        return con.execute(sql, params or []).fetchall()


def chain(**teacher_params):
    return [sim_stage("teacher", **{"steps": 3, **teacher_params}),
            sim_stage("rollouts", ("teacher",), policy="@teacher", steps=2, resources={"gpus": 0}),
            sim_stage("student", ("teacher", "rollouts"), policy="tiny/student", teacher="@teacher",
                      data={"rollouts": "@rollouts"}, steps=2),
            sim_stage("side", steps=2)]


def statuses(home: Path, run_id: str) -> dict[str, str]:
    return dict(rows(home, "SELECT stage_id, status FROM stages WHERE run_id = ?", [run_id]))


def test_runs_in_order_resolves_refs_then_reuses_by_content(write_graph, s2d_home):
    first = run(write_graph(chain()), s2d_home)
    assert first.exit_code == 0 and set(first.stages.values()) == {"FINISHED"}
    start = dict(rows(s2d_home, "SELECT stage_id, start_time FROM stages WHERE run_id = ?", [first.run_id]))
    assert start["teacher"] < start["rollouts"] < start["student"]

    keys = cache_keys(load_graph(write_graph(chain())))
    teacher_out = s2d_home / "stages" / f"teacher-{keys['teacher']}"
    student_out = s2d_home / "stages" / f"student-{keys['student']}"
    inputs = json.loads((student_out / "inputs.json").read_text())
    assert inputs == {"policy": "tiny/student", "teacher": str(teacher_out),
                      "data.rollouts": str(s2d_home / "stages" / f"rollouts-{keys['rollouts']}")}
    spec = json.loads(next((s2d_home / "runs" / first.run_id).glob("student.1.spec.json")).read_text())
    assert spec["work_dir"] == str(student_out) + ".partial" and spec["attempt"] == 1
    assert spec["stage"]["params"]["steps"] == 2 and spec["output_dir"] == str(student_out)

    again = run(write_graph(chain()), s2d_home)
    assert again.exit_code == 0 and set(again.stages.values()) == {"CACHED"}

    changed = run(write_graph(chain(steps=4)), s2d_home)  # the teacher and what reads it
    assert changed.stages == {"teacher": "FINISHED", "rollouts": "FINISHED", "student": "FINISHED",
                              "side": "CACHED"}

    forced = run(write_graph(chain(steps=4)), s2d_home, force=["rollouts"])
    assert forced.stages == {"teacher": "CACHED", "rollouts": "FINISHED", "student": "FINISHED",
                             "side": "CACHED"}
    attempts = dict(rows(s2d_home, "SELECT stage_id, attempt FROM stages WHERE run_id = ?", [forced.run_id]))
    assert attempts["rollouts"] == 2  # the same stage content ran before


def test_failure_isolation_records_error_and_log_tail(write_graph, s2d_home, cli):
    graph = write_graph([sim_stage("bad", steps=5, fail_at_step=2),
                         sim_stage("after_bad", ("bad",), policy="@bad", steps=1),
                         sim_stage("independent", steps=3)])
    proc = cli("execute", str(graph))
    assert proc.returncode == 1
    failure_lines = [line for line in proc.stderr.splitlines() if line.startswith(("FAILED", "KILLED"))]
    assert failure_lines == ["FAILED bad: stage bad failed: RuntimeError: simulated failure at step 2"]
    run_id, status = rows(s2d_home, "SELECT run_id, status FROM runs")[0]
    assert status == "FAILED"
    assert statuses(s2d_home, run_id) == {"bad": "FAILED", "after_bad": "SKIPPED", "independent": "FINISHED"}
    error = rows(s2d_home, "SELECT error FROM stages WHERE stage_id = 'bad'")[0][0]
    assert error.startswith("stage bad failed: RuntimeError: simulated failure at step 2")
    assert "--- log tail ---" in error and "Traceback" in error
    # steps before the failure are kept
    assert rows(s2d_home, "SELECT max(step) FROM metrics WHERE stage_id = 'bad'")[0][0] == 1


def test_retry_after_failure_resumes_from_checkpoint(write_graph, s2d_home):
    graph = write_graph([sim_stage("flaky", steps=6, fail_at_step=3, fail_attempts=1)])
    assert run(graph, s2d_home).exit_code == 1
    second = run(graph, s2d_home)
    assert second.stages == {"flaky": "FINISHED"}
    out = next((s2d_home / "stages").glob("flaky-*[!l]"))
    assert "attempt 2 starts at step 3" in (out / "attempts.log").read_text()
    assert rows(s2d_home, "SELECT count(*), count(DISTINCT (key, step)) FROM metrics_latest WHERE stage_id = 'flaky'") == [(12, 12)]


def test_null_metrics_artifacts_evidence_and_trials(write_graph, s2d_home):
    trials = [{"number": 0, "structure": "bridge", "params": {"labels": 6000}, "value": 0.79,
               "gpu_hours": 312.0, "feasible": True, "note": "default"},
              {"number": 1, "structure": "direct", "params": {}, "value": 0.75, "gpu_hours": 90.0, "feasible": True}]
    graph = write_graph([sim_stage("probe_8b", steps=2, nan_at_step=1,
                                   evidence={"model": "Qwen/Qwen3-8B", "source": "gsm", "prompts": 5, "samples": 8})],
                        meta={"trials": trials, "rationale": "ignored"})
    result = run(graph, s2d_home)
    assert result.exit_code == 0
    assert rows(s2d_home, "SELECT count(*) FROM metrics WHERE step = 1 AND value IS NULL") == [(2,)]
    arts = rows(s2d_home, "SELECT name, bytes, length(sha256) FROM artifacts ORDER BY name")
    assert [a[0] for a in arts] == ["model", "rollouts"] and all(a[1] > 0 and a[2] == 64 for a in arts)
    ev = load_evidence(s2d_home, "Qwen/Qwen3-8B")
    assert len(ev) == 5 and all(s == 8 and 0 <= c <= 8 for s, c in ev)
    assert load_evidence(s2d_home, "Qwen/Qwen3-8B", source="other") == []
    assert rows(s2d_home, "SELECT number, structure, value, feasible, extra FROM trials ORDER BY number") == [
        (0, "bridge", 0.79, True, '{"note": "default"}'), (1, "direct", 0.75, True, None)]


def test_unknown_force_and_missing_runner_module(write_graph, s2d_home):
    from s2d_plan.errors import GraphError

    graph = write_graph([sim_stage("a", steps=1)])
    with pytest.raises(GraphError, match="--force names no stage"):
        run(graph, s2d_home, force=["nope"])


def test_partial_output_without_marker_is_never_taken_as_done(write_graph, s2d_home):
    graph = write_graph([sim_stage("a", steps=2)])
    key = cache_keys(load_graph(graph))["a"]
    fake = s2d_home / "stages" / f"a-{key}"
    fake.mkdir(parents=True)
    (fake / "half-written.bin").write_text("x")
    assert run(graph, s2d_home).stages == {"a": "FINISHED"}
    assert (fake / "COMPLETE").exists() and (fake / "model" / "weights.json").exists()


def test_history_file_is_a_plain_duckdb_database(write_graph, s2d_home):
    run(write_graph([sim_stage("a", steps=3)]), s2d_home)
    con = duckdb.connect(str(s2d_home / "history.duckdb"), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"runs", "stages", "metrics", "artifacts", "evidence", "trials", "metrics_latest", "schema_version"} <= tables
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] >= 1


def test_independent_stages_run_side_by_side(write_graph, s2d_home):
    graph = write_graph([sim_stage("gpu_stage", steps=6, sleep_s=0.05),
                         sim_stage("cpu_stage", steps=6, sleep_s=0.05, resources={"gpus": 0}),
                         sim_stage("second_gpu_stage", steps=1)])
    result = run(graph, s2d_home, gpus=0)  # no GPUs here: GPU stages take turns
    assert result.exit_code == 0
    spans = {sid: (start, end) for sid, start, end in rows(s2d_home, "SELECT stage_id, start_time, end_time FROM stages")}
    assert spans["cpu_stage"][0] < spans["gpu_stage"][1] and spans["gpu_stage"][0] < spans["cpu_stage"][1]
    assert spans["second_gpu_stage"][0] >= spans["gpu_stage"][1]


def _fake_running_run(home: Path, host: str, executor_pid: int, heartbeat) -> None:
    from s2d_plan.history.store import HistoryWriter, utcnow

    db = HistoryWriter(home)
    try:
        db.insert("runs", {"run_id": "other", "plan": "p", "status": "RUNNING", "start_time": utcnow(),
                           "pid": executor_pid, "host": host})
        db.insert("stages", {"run_id": "other", "stage_id": "a", "status": "RUNNING", "attempt": 1,
                             "start_time": utcnow(), "heartbeat": heartbeat, "pid": 999999999})
    finally:
        db.close()


def test_a_run_that_still_looks_alive_is_not_taken_over(write_graph, s2d_home):
    import datetime as dt
    import os
    import subprocess
    import sys

    from s2d_plan.errors import HistoryError
    from s2d_plan.history.store import utcnow

    graph = write_graph([sim_stage("a", steps=1)])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "s2d-plan"])
    try:
        _fake_running_run(s2d_home, os.uname().nodename, alive.pid, utcnow())
        with pytest.raises(HistoryError, match="still executing here"):
            run(graph, s2d_home)
    finally:
        alive.kill()
        alive.wait()
    result = run(graph, s2d_home)  # its executor is gone now: recovered, then run
    assert result.exit_code == 0
    assert rows(s2d_home, "SELECT status FROM stages WHERE run_id = 'other'") == [("FAILED",)]

    other_home = s2d_home.parent / "home2"
    _fake_running_run(other_home, "another-host", 1, utcnow())
    with pytest.raises(HistoryError, match="on another-host sent a heartbeat"):
        run(graph, other_home)
    stale_home = s2d_home.parent / "home3"
    _fake_running_run(stale_home, "another-host", 1, utcnow() - dt.timedelta(minutes=5))
    assert run(graph, stale_home).exit_code == 0


def test_forced_rerun_replaces_the_output_only_when_it_completes(write_graph, s2d_home):
    graph = write_graph([sim_stage("a", steps=3, fail_at_step=1, fail_attempts=[2]),
                         sim_stage("b", ("a",), policy="@a", steps=1)])
    assert run(graph, s2d_home).exit_code == 0
    out = next(p for p in (s2d_home / "stages").iterdir() if p.name.startswith("a-"))
    marker = (out / "COMPLETE").read_text()

    failed = run(graph, s2d_home, force=["a"])  # attempt 2 fails
    assert failed.stages == {"a": "FAILED", "b": "SKIPPED"}
    assert (out / "COMPLETE").read_text() == marker  # the previous output is back, untouched
    assert "previous complete output was kept" in rows(s2d_home, "SELECT error FROM stages WHERE run_id = ? "
                                                       "AND stage_id = 'a'", [failed.run_id])[0][0]
    assert run(graph, s2d_home).stages == {"a": "CACHED", "b": "CACHED"}

    replaced = run(graph, s2d_home, force=["a"])  # attempt 3 completes and replaces it
    assert replaced.stages == {"a": "FINISHED", "b": "FINISHED"}
    assert (out / "COMPLETE").read_text() != marker
    assert not list((s2d_home / "stages").glob("*.replaced-*"))


def test_output_set_aside_by_a_dead_forced_run_is_reclaimed(write_graph, s2d_home):
    graph = write_graph([sim_stage("a", steps=2)])
    assert run(graph, s2d_home).exit_code == 0
    out = next(p for p in (s2d_home / "stages").iterdir() if p.name.startswith("a-"))
    out.rename(out.with_name(out.name + ".replaced-20990101-000000-dead"))  # as a kill -9 would leave it
    out.mkdir()  # a half-written new output
    assert run(graph, s2d_home).stages == {"a": "CACHED"}
    assert (out / "COMPLETE").exists() and not list((s2d_home / "stages").glob("*.replaced-*"))


def test_orphaned_workers_of_a_dead_runner_are_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from s2d_plan.run.procs import kill_stale, pid_alive

    spec = str(tmp_path / "stage.1.spec.json")
    # a launcher (session leader) whose worker outlives it, as torchrun's would
    code = ("import subprocess, sys, time; "
            f"subprocess.Popen([sys.executable, '-c', 'print(1, flush=True); import time; time.sleep(60)', {spec!r}]);"
            " time.sleep(60)")
    leader = subprocess.Popen([sys.executable, "-c", code, spec], start_new_session=True,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert leader.stdout.readline().strip() == "1"  # the worker is up
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait()
        assert kill_stale(leader.pid, spec)  # the worker, orphaned, still in the group
        wait_for(lambda: not kill_stale(leader.pid, spec), timeout=10)  # nothing left once it is gone
        assert not pid_alive(leader.pid)
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_gpus_are_shared_out_and_never_oversubscribed(write_graph, s2d_home):
    graph = write_graph([sim_stage(f"s{i}", steps=4, sleep_s=0.1) for i in range(3)]
                        + [sim_stage("wide", ("s0", "s1", "s2"), steps=1, resources={"gpus": 4})])
    assert run(graph, s2d_home, gpus=2).exit_code == 0
    spans = rows(s2d_home, "SELECT stage_id, start_time, end_time, output_dir FROM stages ORDER BY start_time")
    devices = {sid: json.loads((Path(out) / "device.json").read_text()) for sid, _, _, out in spans}
    assert {devices[f"s{i}"]["CUDA_VISIBLE_DEVICES"] for i in range(3)} == {"0", "1"}
    assert devices["wide"] == {"device": "cuda", "CUDA_VISIBLE_DEVICES": "0,1"}  # capped at what exists
    for _, start, _, _ in spans:  # at no start time do more than two 1-GPU stages overlap
        assert sum(1 for sid, s, e, _ in spans if sid != "wide" and s <= start < e) <= 2


def test_stage_that_completed_as_its_executor_died_is_finished(write_graph, s2d_home):
    import datetime as dt

    from s2d_plan.history.store import HistoryWriter, utcnow

    graph = write_graph([sim_stage("a", steps=2)])
    first = run(graph, s2d_home)
    db = HistoryWriter(s2d_home)  # rewind the history to "RUNNING" as a kill -9 would leave it
    try:
        db.update_stage(first.run_id, "a", status="RUNNING", heartbeat=utcnow() - dt.timedelta(minutes=5))
        db.update_run(first.run_id, status="RUNNING", host="elsewhere")
    finally:
        db.close()
    second = run(graph, s2d_home)
    assert second.stages == {"a": "CACHED"}
    assert rows(s2d_home, "SELECT status, error FROM stages WHERE run_id = ?", [first.run_id]) == [("FINISHED", None)]


def test_a_changed_local_model_or_data_file_is_not_reused(write_graph, s2d_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative model path, as a plan gives it
    model = Path("student")
    model.mkdir()
    (model / "config.json").write_text('{"layers": 2}')
    data = tmp_path / "labeled.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n')
    stages = [sim_stage("a", policy="student", steps=1, data={"labeled": {"source": str(data), "count": 1}}),
              sim_stage("b", steps=1)]
    assert set(run(write_graph(stages), s2d_home).stages.values()) == {"FINISHED"}
    assert set(run(write_graph(stages), s2d_home).stages.values()) == {"CACHED"}

    data.write_text('{"problem": "1+2", "answer": "3"}\n')
    assert run(write_graph(stages), s2d_home).stages == {"a": "FINISHED", "b": "CACHED"}
    (model / "config.json").write_text('{"layers": 3}')
    assert run(write_graph(stages), s2d_home).stages == {"a": "FINISHED", "b": "CACHED"}
