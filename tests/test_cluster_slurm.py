"""The executor on a real single-host Slurm cluster started by ``scripts/slurm-local.sh``
(munged, slurmctld and two slurmd nodes n1, n2 with one fake GPU each): stages as jobs on
both nodes, a 2-GPU stage as one job of two nodes with ``srun`` on each, a job cancelled
mid-stage by someone else retried on the other node and resumed from its checkpoint,
Ctrl-C ``scancel``ing the running job, an executor killed mid-stage and started again
re-attaching to its job, and an unreachable controller or a home the nodes cannot see
refused before anything is submitted.

Part of ``make test-cluster`` (skipped where Slurm is not installed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

if not shutil.which("slurmctld"):
    pytest.skip("Slurm is not installed (scripts/slurm-local.sh install)", allow_module_level=True)

from clusters import assert_reattached, can_unshare, live_rows, private_mount_argv, rows, start_slurm_cluster
from conftest import REPO, cli_env, sim_stage, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def slurm():
    cluster = start_slurm_cluster()
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]  # every CLI the tests start talks to it
    try:
        yield cluster
    finally:
        os.environ.pop("SLURM_CONF", None)
        cluster.stop()


def slurm_graph(write_graph, stages, **cl):
    return write_graph(stages, cluster={"backend": "slurm", "gpus_per_node": 1, **cl})


def start_execute(graph, home) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home), cwd=REPO)


def test_jobs_on_both_nodes_and_one_job_of_two_nodes(slurm, write_graph, cli):
    graph = slurm_graph(write_graph, [
        sim_stage("a", steps=4, sleep_s=0.5, resources={"gpus": 1}),
        sim_stage("b", steps=4, sleep_s=0.5, resources={"gpus": 1}),
        sim_stage("both", needs=("a", "b"), policy="@a", steps=3, resources={"gpus": 2})])
    r = cli("execute", str(graph), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    placed = rows(cli, "SELECT stage_id, backend, node, gpus, job_id, task_id, status FROM placements "
                       "ORDER BY stage_id, task_id")
    assert all(p["backend"] == "slurm" and p["status"] == "FINISHED" and p["gpus"] == 1 for p in placed)
    where = {}
    for p in placed:
        where.setdefault(p["stage_id"], []).append(p["node"])
    assert sorted(where["a"] + where["b"]) == ["n1", "n2"]  # one GPU per node: side by side
    both = [p for p in placed if p["stage_id"] == "both"]
    assert [p["node"] for p in both] == ["n1", "n2"] and len({p["job_id"] for p in both}) == 1
    assert [p["task_id"] for p in both] == [f"{both[0]['job_id']}.0", f"{both[0]['job_id']}.1"]
    job = slurm.run("scontrol", "show", "job", "-o", both[0]["job_id"])
    assert "NumNodes=2" in job and "JobState=COMPLETED" in job
    steps = rows(cli, "SELECT stage_id, count(DISTINCT step) AS n FROM metrics WHERE key = 'loss' GROUP BY 1 ORDER BY 1")
    assert [(s["stage_id"], s["n"]) for s in steps] == [("a", 4), ("b", 4), ("both", 3)]


def test_job_cancelled_mid_stage_is_retried_and_resumes(slurm, write_graph, cli, s2d_home):
    # long enough that the scancel lands mid-stage even when the machine is loaded
    graph = slurm_graph(write_graph, [sim_stage("long", steps=40, sleep_s=0.4, resources={"gpus": 1})], retries=1)
    proc = start_execute(graph, s2d_home)
    try:
        wait_for(lambda: live_rows(cli, "SELECT step FROM metrics WHERE stage_id = 'long' AND step >= 3"),
                 timeout=120, every=0.5)
        job = rows(cli, "SELECT job_id FROM placements WHERE stage_id = 'long' AND attempt = 1")[0]["job_id"]
        slurm.run("scancel", job)  # an admin, or preemption
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    attempts = rows(cli, "SELECT attempt, status, error, node, job_id FROM placements WHERE stage_id = 'long' "
                         "ORDER BY attempt")
    assert [a["status"] for a in attempts] == ["FAILED", "FINISHED"]
    assert attempts[0]["error"].startswith(f"node lost (slurm job {job} CANCELLED")
    # the retry kept off the node the lost attempt ran on (the other one was free)
    assert {attempts[0]["node"], attempts[1]["node"]} == {"n1", "n2"}
    assert f"ExcNodeList={attempts[0]['node']} " in slurm.run("scontrol", "show", "job", "-o", attempts[1]["job_id"])
    first = rows(cli, "SELECT min(step) AS s FROM metrics WHERE stage_id = 'long' AND attempt = 2")[0]["s"]
    assert first >= 3  # resumed from the checkpoint, not from step 0
    assert rows(cli, "SELECT count(DISTINCT step) AS n FROM metrics_latest WHERE stage_id = 'long' "
                     "AND key = 'loss'")[0]["n"] == 40


def test_ctrl_c_scancels_the_job(slurm, write_graph, cli, s2d_home):
    graph = slurm_graph(write_graph, [sim_stage("slow", steps=300, sleep_s=0.2, resources={"gpus": 1}),
                                      sim_stage("after", needs=("slow",), steps=1)])
    proc = start_execute(graph, s2d_home)
    try:
        wait_for(lambda: live_rows(cli, "SELECT step FROM metrics WHERE stage_id = 'slow' AND step >= 2"),
                 timeout=120, every=0.5)
        job = rows(cli, "SELECT job_id FROM placements WHERE stage_id = 'slow'")[0]["job_id"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, out + err
    st = {s["stage_id"]: s["status"] for s in rows(cli, "SELECT stage_id, status FROM stages")}
    assert st == {"slow": "KILLED", "after": "SKIPPED"}
    wait_for(lambda: slurm.run("squeue", "-h", "-j", job).strip() == "", timeout=60, every=1)


def test_unreachable_controller_is_refused_before_anything_runs(slurm, write_graph, tmp_path, s2d_home):
    conf = tmp_path / "slurm.conf"  # the same cluster, but a controller port nobody listens on
    text = (slurm.root / "slurm.conf").read_text()
    port = next(line for line in text.splitlines() if line.startswith("SlurmctldPort="))
    conf.write_text(text.replace(port, "SlurmctldPort=1"))
    graph = slurm_graph(write_graph, [sim_stage("a", steps=1)])
    r = subprocess.run([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], capture_output=True, text=True,
                       env=dict(cli_env(s2d_home), SLURM_CONF=str(conf)), cwd=REPO, timeout=180)
    assert r.returncode == 2 and "cannot reach the Slurm controller" in r.stderr, r.stdout + r.stderr
    assert not (s2d_home / "history.duckdb").exists()


def test_restarted_executor_reattaches_to_the_job_its_killed_predecessor_left(slurm, write_graph, cli, s2d_home):
    """SIGKILL the executor mid-stage, run it again: it waits on the same Slurm job (no
    second submission), tails its metrics into the history and records its outcome."""
    graph = slurm_graph(write_graph, [sim_stage("long", steps=60, sleep_s=0.25, resources={"gpus": 1}),
                                      sim_stage("next", needs=("long",), policy="@long", steps=2)])
    proc = start_execute(graph, s2d_home)
    again = None
    try:
        wait_for(lambda: live_rows(cli, "SELECT step FROM metrics WHERE stage_id = 'long' AND step >= 3"),
                 timeout=120, every=0.5)
        job = rows(cli, "SELECT job_id FROM placements WHERE stage_id = 'long'")[0]["job_id"]
        proc.send_signal(signal.SIGKILL)  # the executor dies; its job goes on
        proc.communicate(timeout=60)
        assert slurm.run("squeue", "-h", "-j", job, "-o", "%T").strip() == "RUNNING"
        again = start_execute(graph, s2d_home)
        out, err = again.communicate(timeout=300)
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.kill()
    assert again.returncode == 0, out + err
    first, second = assert_reattached(cli, out + err, "slurm", job)
    stages = rows(cli, "SELECT s.run_id, s.status, s.attempt, s.error FROM stages s JOIN runs r USING (run_id) "
                       "WHERE s.stage_id = 'long' ORDER BY r.start_time")
    assert [(s["run_id"], s["status"], s["attempt"]) for s in stages] == [(first, "FAILED", 1), (second, "FINISHED", 1)]
    assert f"run {second} re-attached to it" in stages[0]["error"]
    assert "COMPLETED" in slurm.run("scontrol", "show", "job", "-o", job)
    # Slurm's own record of finished jobs: the re-attached run submitted only "next"
    jobs = (slurm.root / "log/jobcomp.log").read_text().splitlines()
    assert [j for j in jobs if f"JobId={job} " in j and "JobState=COMPLETED" in j]
    assert [j.split("Name=")[1].split()[0] for j in jobs if f"s2d-{second}-" in j] == [f"s2d-{second}-next-1"]
    # every step once, all of attempt 1: lines before the kill under the first run, the rest under the second
    steps = rows(cli, "SELECT count(DISTINCT step) AS n, count(*) AS lines, max(attempt) AS a FROM metrics "
                      "WHERE stage_id = 'long' AND key = 'loss'")[0]
    assert steps == {"n": 60, "lines": 60, "a": 1}


def test_home_a_node_cannot_see_is_refused_before_anything_runs(slurm, write_graph, tmp_path):
    """The executor's home on a disk only it sees (a tmpfs in its own mount namespace):
    the job that looks for the home's token on a compute node does not find it."""
    if not can_unshare():
        pytest.skip("needs unshare --mount (CAP_SYS_ADMIN) to give the executor a disk of its own")
    private = tmp_path / "private"
    private.mkdir()
    graph = slurm_graph(write_graph, [sim_stage("a", steps=1)])
    argv = private_mount_argv(private, [sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)])
    r = subprocess.run(argv, capture_output=True, text=True, env=cli_env(private / "home"), cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: the home {private / 'home'} must be on a filesystem every Slurm node sees" in r.stderr
    assert not list(private.iterdir())  # what the executor wrote there stayed in its namespace
