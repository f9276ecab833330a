"""The executor under kill -9, SIGTERM and concurrent readers, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import sim_stage, wait_for

from s2d_plan.history.read import load_evidence, open_reader
from s2d_plan.run.procs import pid_alive


def rows(home: Path, sql: str, params=None) -> list[tuple]:
    with open_reader(home) as con:
        return con.execute(sql, params or []).fetchall()


def lines_in(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if '"key"' in line) if path.exists() else 0


def metrics_file(home: Path, stage: str, attempt: int = 1) -> Path | None:
    found = list((home / "runs").glob(f"*/{stage}.{attempt}.metrics.jsonl")) if (home / "runs").exists() else []
    return found[0] if found else None


def test_kill9_mid_stage_then_rerun_reuses_and_resumes(write_graph, s2d_home, cli, start_cli):
    graph = write_graph([
        sim_stage("prep", steps=2),
        sim_stage("train", ("prep",), policy="@prep", steps=40, sleep_s=0.05, checkpoint_every=5),
        sim_stage("evaluate", ("train",), policy="@train", steps=2)])
    executor = start_cli("execute", str(graph))
    metrics = wait_for(lambda: metrics_file(s2d_home, "train"))
    wait_for(lambda: lines_in(metrics) >= 2 * 12)  # past two checkpoints
    os.kill(executor.pid, signal.SIGKILL)
    executor.wait(timeout=10)

    dead_run, runner_pid = rows(s2d_home, "SELECT run_id, pid FROM stages WHERE stage_id = 'train'")[0]
    wait_for(lambda: not pid_alive(runner_pid), timeout=10)  # died with its executor
    killed_lines = lines_in(metrics)

    again = cli("execute", str(graph))
    assert again.returncode == 0, again.stderr + again.stdout
    assert "left RUNNING by run" in again.stdout
    new_run = rows(s2d_home, "SELECT run_id FROM runs WHERE run_id <> ?", [dead_run])[0][0]
    status = dict(rows(s2d_home, "SELECT stage_id, status || ':' || attempt FROM stages WHERE run_id = ?", [new_run]))
    assert status["train"] == "FINISHED:2" and status["evaluate"] == "FINISHED:1"
    assert status.get("prep", "").startswith("CACHED")
    old = dict(rows(s2d_home, "SELECT stage_id, status FROM stages WHERE run_id = ?", [dead_run]))
    assert old == {"prep": "FINISHED", "train": "FAILED", "evaluate": "SKIPPED"}
    assert rows(s2d_home, "SELECT status FROM runs WHERE run_id = ?", [dead_run]) == [("FAILED",)]
    assert "executor died" in rows(s2d_home, "SELECT error FROM stages WHERE run_id = ? AND stage_id = 'train'", [dead_run])[0][0]

    out = next(p for p in (s2d_home / "stages").iterdir() if p.name.startswith("train-"))
    resumed_at = int((out / "attempts.log").read_text().splitlines()[-1].rsplit(" ", 1)[1])
    assert resumed_at >= 10  # from the checkpoint, not from scratch
    # everything the killed attempt wrote reached the raw table (recovery ingests the tail)
    assert rows(s2d_home, "SELECT count(*) FROM metrics WHERE stage_id = 'train' AND attempt = 1") == [(killed_lines,)]
    assert rows(s2d_home, """SELECT count(*), count(DISTINCT (key, step)), min(step), max(step)
                             FROM metrics_latest WHERE stage_id = 'train'""") == [(80, 80, 0, 39)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_stops_the_stage_records_killed_and_flushes_metrics(sig, write_graph, s2d_home, start_cli):
    graph = write_graph([sim_stage("slow", steps=400, sleep_s=0.02),
                         sim_stage("after", ("slow",), policy="@slow", steps=1)])
    executor = start_cli("execute", str(graph))
    metrics = wait_for(lambda: metrics_file(s2d_home, "slow"))
    wait_for(lambda: lines_in(metrics) >= 20)
    executor.send_signal(sig)
    out, err = executor.communicate(timeout=30)
    assert executor.returncode == 128 + sig, out + err
    assert f"KILLED slow: stopped by {sig.name}" in err
    run_id, status = rows(s2d_home, "SELECT run_id, status FROM runs")[0]
    assert status == "KILLED"
    assert dict(rows(s2d_home, "SELECT stage_id, status FROM stages")) == {"slow": "KILLED", "after": "SKIPPED"}
    runner_pid = rows(s2d_home, "SELECT pid FROM stages WHERE stage_id = 'slow'")[0][0]
    assert not pid_alive(runner_pid)
    assert rows(s2d_home, "SELECT count(*) FROM metrics WHERE stage_id = 'slow'") == [(lines_in(metrics),)]


def test_readers_query_while_a_run_goes_on(write_graph, s2d_home, cli, start_cli):
    earlier = cli("execute", str(write_graph([sim_stage("quick", steps=3)], name="quick.json")))
    assert earlier.returncode == 0
    graph = write_graph([sim_stage("long", steps=250, sleep_s=0.04)])
    executor = start_cli("execute", str(graph))
    wait_for(lambda: metrics_file(s2d_home, "long"))
    # mid-run, a reader sees the earlier run and this one (its rows a few seconds old at most)
    sql = "SELECT s.stage_id, s.status FROM runs r JOIN stages s USING (run_id) ORDER BY r.start_time"
    assert wait_for(lambda: [tuple(r.values()) for r in json.loads(cli("history", sql, "--json").stdout)]
                    == [("quick", "FINISHED"), ("long", "RUNNING")], timeout=15)

    def count() -> int:
        q = cli("history", "SELECT count(*) AS n FROM metrics WHERE stage_id = 'long'", "--json")
        assert q.returncode == 0, q.stderr
        return json.loads(q.stdout)[0]["n"]

    with open_reader(s2d_home) as held:  # a reader keeps the history open the whole time ...
        first = held.execute("SELECT count(*) FROM metrics").fetchall()[0][0]
        assert load_evidence(s2d_home, "any/model") == []  # the allocator's read works mid-run
        counts = [count()]
        # ... and other readers still see the run move on: it is neither blocked nor failed
        wait_for(lambda: counts.append(count()) or counts[-1] > counts[0], timeout=20)
        assert held.execute("SELECT count(*) FROM metrics").fetchall()[0][0] >= first
    assert executor.poll() is None, "the run should still be going"
    bad = cli("history", "DELETE FROM metrics")
    assert bad.returncode == 2 and "read-only" in bad.stderr and "Traceback" not in bad.stderr
    out, err = executor.communicate(timeout=60)
    assert executor.returncode == 0, err
    assert counts == sorted(counts)  # never going back
    assert count() == 500


BAD_GRAPHS = {
    "not_json": "{this is not json",
    "unknown_kind": {"plan": "p", "stages": [{"id": "a", "kind": "train", "policy": "m"}]},
    "needs_cycle": {"plan": "p", "stages": [{"id": "a", "kind": "simulate", "policy": "m", "needs": ["b"]},
                                            {"id": "b", "kind": "simulate", "policy": "m", "needs": ["a"]}]},
    "ref_to_missing_stage": {"plan": "p", "stages": [{"id": "a", "kind": "simulate", "policy": "@ghost"}]},
    "needs_missing_stage": {"plan": "p", "stages": [{"id": "a", "kind": "simulate", "policy": "m", "needs": ["ghost"]}]},
    "not_an_object": [1, 2],
    "duplicate_id": {"plan": "p", "stages": [{"id": "a", "kind": "simulate", "policy": "m"},
                                             {"id": "a", "kind": "simulate", "policy": "m"}]},
}
EXPECTED = {"not_json": "not a JSON stage graph", "unknown_kind": "unknown stage kind 'train'",
            "needs_cycle": "cycle", "ref_to_missing_stage": "@ghost, which is not a stage",
            "needs_missing_stage": "needs 'ghost', which is not a stage", "not_an_object": "JSON object",
            "duplicate_id": "appears twice"}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_bad_graph_exits_2_before_anything_runs(case, tmp_path, s2d_home, cli):
    path = tmp_path / f"{case}.json"
    content = BAD_GRAPHS[case]
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    proc = cli("execute", str(path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and EXPECTED[case] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not s2d_home.exists()  # nothing ran, nothing was written


def test_dry_run_prints_order_commands_and_estimates(write_graph, s2d_home, cli):
    graph = write_graph([sim_stage("a", steps=1, estimated={"gpu_hours": 1.5}),
                         sim_stage("b", ("a",), policy="@a", steps=1, estimated={"gpu_hours": 0.25})])
    proc = cli("execute", str(graph), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("1. a [simulate]") and lines[3].startswith("2. b [simulate]")
    assert "-m tests.fakes.simulate" in lines[2] and "would run" in lines[1]
    assert "estimated GPU-hours to run: 1.75" in proc.stdout
    assert not s2d_home.exists()


def test_execute_a_plan_says_what_it_chose_first(cli, s2d_home):
    from conftest import REPO

    proc = cli("execute", str(REPO / "plans" / "budget.yaml"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert "predicted" in first and "GPU-hours" in first  # the recommender's summary
    assert second.startswith("plan ") and "dry run" in second
    assert "estimated GPU-hours to run:" in proc.stdout and not s2d_home.exists()


def test_an_unfinished_plan_resumes_its_own_graph(write_graph, s2d_home, cli):
    from conftest import REPO

    from s2d_plan.graph import load_graph
    from s2d_plan.plan.spec import load_plan
    from s2d_plan.run.executor import execute_graph
    from s2d_plan.run.progress import PlainDisplay

    plan = REPO / "plans" / "budget.yaml"
    graph = write_graph([sim_stage("only_stage", steps=2, fail_at_step=1)], plan_hash=load_plan(plan).hash(),
                        meta={"structure": "simulated structure"})
    failed = execute_graph(load_graph(graph), s2d_home, display=PlainDisplay())
    assert failed.status == "FAILED"
    proc = cli("execute", str(plan), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"resuming the graph of run {failed.run_id} (FAILED; the plan is unchanged): "
                                  "simulated structure")
    assert "1. only_stage [simulate]" in proc.stdout
