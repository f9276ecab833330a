"""The executor on a real two-node Ray cluster started by this module (``ray start
--head`` plus a second ``ray start --address``, each with its own temp dir, one CPU and
one fake GPU): stages land on both nodes, a multi-node stage spans both, a node killed
mid-stage fails that attempt with its cause and the stage resumes on the other node,
Ctrl-C leaves no actor behind, an executor killed mid-stage and started again re-attaches
to its actors, the head listens on 127.0.0.1 only, and an unreachable cluster
or a home the nodes cannot see is refused up front.

Part of ``make test-cluster`` (about 1 GB of memory; skipped without Ray).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from clusters import assert_reattached, can_unshare, live_rows, private_mount_argv, rows, start_ray_cluster
from conftest import REPO, cli_env, sim_stage, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = start_ray_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def ray_graph(write_graph, cluster, stages, **cl):
    return write_graph(stages, cluster={"backend": "ray", "address": cluster.address, **cl})


def node_of(ray_cluster) -> dict[str, str]:
    """placements.node (host:node-id prefix) -> node_a / node_b."""
    return {nid[:8]: name for name, nid in ray_cluster.node_ids().items()}


def test_stages_land_on_both_nodes_and_a_multinode_stage_spans_them(ray_cluster, write_graph, cli):
    graph = ray_graph(write_graph, ray_cluster, [
        sim_stage("a", steps=4, sleep_s=0.5, resources={"gpus": 1}),
        sim_stage("b", steps=4, sleep_s=0.5, resources={"gpus": 1}),
        sim_stage("both", needs=("a", "b"), policy="@a", steps=3, resources={"gpus": 2})])
    r = cli("execute", str(graph), timeout=300)
    assert r.returncode == 0, r.stderr
    names = node_of(ray_cluster)
    placed = rows(cli, "SELECT stage_id, attempt, backend, node, gpus, job_id, task_id, status FROM placements "
                       "ORDER BY stage_id, task_id")
    where = {}
    for p in placed:
        assert p["backend"] == "ray" and p["status"] == "FINISHED" and p["gpus"] == 1
        assert p["job_id"].endswith(f"-{p['stage_id']}-1") and p["task_id"].startswith(p["job_id"])
        where.setdefault(p["stage_id"], []).append(names[p["node"].split(":")[1]])
    # one fake GPU per node: the two independent stages ran side by side, one per node,
    # and the 2-GPU stage got one bundle on each node
    assert sorted(where["a"] + where["b"]) == ["node_a", "node_b"]
    assert sorted(where["both"]) == ["node_a", "node_b"]
    st = rows(cli, "SELECT stage_id, status FROM stages ORDER BY stage_id")
    assert [s["status"] for s in st] == ["FINISHED"] * 3
    steps = rows(cli, "SELECT stage_id, count(DISTINCT step) AS n FROM metrics WHERE key = 'loss' GROUP BY 1 ORDER BY 1")
    assert [(s["stage_id"], s["n"]) for s in steps] == [("a", 4), ("b", 4), ("both", 3)]
    # the same graph again: everything CACHED, nothing submitted
    r = cli("execute", str(graph), timeout=300)
    assert r.returncode == 0 and (r.stdout + r.stderr).count("CACHED") == 3, r.stderr


def test_node_killed_mid_stage_is_retried_on_the_other_node_from_its_checkpoint(ray_cluster, write_graph, cli,
                                                                                s2d_home):
    graph = ray_graph(write_graph, ray_cluster, [
        sim_stage("x", steps=16, sleep_s=0.5, resources={"gpus": 1}),
        sim_stage("y", steps=16, sleep_s=0.5, resources={"gpus": 1})], retries=1)
    names = node_of(ray_cluster)
    proc = subprocess.Popen([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(s2d_home), cwd=REPO)
    try:
        # live history while the run goes: both stages placed and logging steps
        live = "SELECT p.stage_id, p.node, max(m.step) AS step FROM placements p JOIN metrics m USING (stage_id) " \
               "GROUP BY ALL HAVING max(m.step) >= 3"
        placed = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(live_rows(cli, live)), timeout=120, every=0.5)
        victim = next(p["stage_id"] for p in placed if names[p["node"].split(":")[1]] == "node_b")
        ray_cluster.kill_node("node_b")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        ray_cluster.start_node("node_b", head=False)  # the next tests want two nodes again
        ray_cluster.wait_nodes(2)
    assert proc.returncode == 0, err
    attempts = rows(cli, f"SELECT attempt, node, status, error FROM placements WHERE stage_id = '{victim}' "
                         "ORDER BY attempt")
    assert [a["status"] for a in attempts] == ["FAILED", "FINISHED"], attempts
    assert names.get(attempts[0]["node"].split(":")[1]) == "node_b"
    assert names.get(attempts[1]["node"].split(":")[1]) == "node_a"
    assert attempts[0]["error"].startswith("node lost (ray Actor"), attempts[0]
    stage = rows(cli, f"SELECT status, attempt FROM stages WHERE stage_id = '{victim}'")[0]
    assert stage == {"status": "FINISHED", "attempt": 2}
    # attempt 2 resumed from the checkpoint attempt 1 left in the shared work directory
    first = rows(cli, f"SELECT min(step) AS s FROM metrics WHERE stage_id = '{victim}' AND attempt = 2")[0]["s"]
    assert first >= 3
    curve = rows(cli, f"SELECT count(DISTINCT step) AS n FROM metrics_latest WHERE stage_id = '{victim}' "
                      "AND key = 'loss'")[0]["n"]
    assert curve == 16
    assert "retry 1 of 1" in out + err


def test_ctrl_c_cancels_the_ray_work(ray_cluster, write_graph, cli, s2d_home):
    graph = ray_graph(write_graph, ray_cluster, [
        sim_stage("slow", steps=200, sleep_s=0.2, resources={"gpus": 1}),
        sim_stage("after", needs=("slow",), steps=1)])
    proc = subprocess.Popen([sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(s2d_home), cwd=REPO)
    try:
        wait_for(lambda: live_rows(cli, "SELECT step FROM metrics WHERE stage_id = 'slow' AND step >= 2"),
                 timeout=120, every=0.5)
        job = rows(cli, "SELECT job_id FROM placements WHERE stage_id = 'slow'")[0]["job_id"]
        assert ray_cluster.alive_actors(job)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    st = {s["stage_id"]: s["status"] for s in rows(cli, "SELECT stage_id, status FROM stages")}
    assert st == {"slow": "KILLED", "after": "SKIPPED"}
    assert rows(cli, "SELECT status FROM placements WHERE stage_id = 'slow'") == [{"status": "KILLED"}]
    wait_for(lambda: ray_cluster.alive_actors(job) == [], timeout=60, every=1)


def test_unreachable_cluster_is_refused_before_anything_runs(write_graph, cli, s2d_home):
    graph = write_graph([sim_stage("a", steps=1)], cluster={"backend": "ray", "address": "127.0.0.1:1"})
    started = time.monotonic()
    r = cli("execute", str(graph), timeout=120)
    assert r.returncode == 2 and "cannot reach the Ray cluster at '127.0.0.1:1'" in r.stderr, r.stderr
    assert time.monotonic() - started < 60
    assert not (s2d_home / "history.duckdb").exists() and not (s2d_home / "stages").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("trl")
    out = tmp_path_factory.mktemp("tiny") / "tiny-models"
    r = subprocess.run([sys.executable, "-m", "tinyworld.models", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_the_tiny_plan_on_ray(ray_cluster, tiny, cli, monkeypatch):
    """plans/tiny-cpu.yaml end to end (every real stage kind on tiny models) with
    ``--backend ray``: recommended, executed as Ray actors, every attempt placed."""
    plans = tiny.parent / "plans"
    plans.mkdir(exist_ok=True)
    shutil.copy(REPO / "plans/tiny-cpu.yaml", plans / "tiny-cpu.yaml")  # it reads ../tiny-models
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)  # what `--backend ray` (address: auto) joins
    r = cli("execute", str(plans / "tiny-cpu.yaml"), "--backend", "ray", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = rows(cli, "SELECT s.stage_id, s.status, count(p.node) AS placed, any_value(p.backend) AS backend "
                       "FROM stages s LEFT JOIN placements p USING (run_id, stage_id) GROUP BY ALL")
    assert len(stages) == 7 and {(s["status"], s["placed"], s["backend"]) for s in stages} == {("FINISHED", 1, "ray")}
    assert rows(cli, "SELECT count(*) AS n FROM metrics WHERE key LIKE 'eval/arith/%'")[0]["n"] >= 1


def test_real_tiny_model_stage_spans_two_ray_nodes(ray_cluster, write_graph, cli, tiny):
    """A real OPD stage (tiny offline models) as one torchrun job across both Ray nodes
    (one process per node, gloo, rendezvous at node rank 0's address), then an eval of it."""
    prompts = {"source": str(tiny / "data/prompts.jsonl"), "prompt_field": "problem", "count": 8}
    graph = ray_graph(write_graph, ray_cluster, [
        {"id": "opd", "kind": "opd", "policy": str(tiny / "student"), "teacher": str(tiny / "teacher"),
         "data": {"prompts": prompts}, "resources": {"gpus": 2},
         "params": {"steps": 2, "prompts_per_step": 2, "max_completion_length": 16}},
        {"id": "eval", "kind": "eval", "policy": "@opd", "needs": ["opd"], "resources": {"gpus": 1},
         "data": {"eval": [{"name": "arith", "source": str(tiny / "data/eval.jsonl"), "size": 4}]},
         "params": {"k": 2, "max_new_tokens": 16}}])
    r = cli("execute", str(graph), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = node_of(ray_cluster)
    opd = rows(cli, "SELECT node, task_id FROM placements WHERE stage_id = 'opd' ORDER BY task_id")
    assert sorted(names[p["node"].split(":")[1]] for p in opd) == ["node_a", "node_b"]
    out = Path(rows(cli, "SELECT output_dir FROM stages WHERE stage_id = 'opd'")[0]["output_dir"])
    assert json.loads((out / "COMPLETE").read_text())["summary"]["processes"] == 2  # one per node
    assert [m["step"] for m in rows(cli, "SELECT step FROM metrics WHERE stage_id = 'opd' AND key = 'loss' "
                                         "ORDER BY step")] == [1, 2]
    assert rows(cli, "SELECT count(*) AS n FROM metrics WHERE stage_id = 'eval' AND key = 'eval/arith/pass@2'")[0]["n"] == 1


def test_restarted_executor_reattaches_to_the_actors_its_killed_predecessor_left(ray_cluster, write_graph, cli,
                                                                                 s2d_home):
    """SIGKILL the executor mid-stage, run it again: it finds the detached actor by the
    name in ``placements``, waits on the same runner, and the stage finishes as attempt 1."""
    graph = ray_graph(write_graph, ray_cluster, [sim_stage("long", steps=60, sleep_s=0.25, resources={"gpus": 1})])
    env = cli_env(s2d_home)
    start = [sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)]
    proc = subprocess.Popen(start, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    again = None
    try:
        wait_for(lambda: live_rows(cli, "SELECT step FROM metrics WHERE stage_id = 'long' AND step >= 3"),
                 timeout=120, every=0.5)
        job = rows(cli, "SELECT job_id FROM placements WHERE stage_id = 'long'")[0]["job_id"]
        proc.send_signal(signal.SIGKILL)  # the executor dies; its detached actor goes on
        proc.communicate(timeout=60)
        assert ray_cluster.alive_actors(job) == [f"{job}-0"]
        again = subprocess.Popen(start, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        out, err = again.communicate(timeout=300)
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.kill()
    assert again.returncode == 0, out + err
    first, second = assert_reattached(cli, out + err, "ray", job)
    assert rows(cli, f"SELECT status, attempt FROM stages WHERE run_id = '{second}'") == \
        [{"status": "FINISHED", "attempt": 1}]
    steps = rows(cli, "SELECT count(DISTINCT step) AS n, count(*) AS lines, max(attempt) AS a FROM metrics "
                      "WHERE stage_id = 'long' AND key = 'loss'")[0]
    assert steps == {"n": 60, "lines": 60, "a": 1}  # one runner: no step twice, none lost
    wait_for(lambda: ray_cluster.alive_actors(job) == [], timeout=60, every=1)  # released once it ended


def test_home_the_nodes_cannot_see_is_refused_before_anything_runs(ray_cluster, write_graph, tmp_path):
    """The executor's home on a disk only it sees (a tmpfs in its own mount namespace): a
    probe actor on each Ray node does not find the home's token, and the run stops."""
    if not can_unshare():
        pytest.skip("needs unshare --mount (CAP_SYS_ADMIN) to give the executor a disk of its own")
    private = tmp_path / "private"
    private.mkdir()
    graph = ray_graph(write_graph, ray_cluster, [sim_stage("a", steps=1)])
    argv = private_mount_argv(private, [sys.executable, "-m", "s2d_plan.cli", "execute", str(graph)])
    r = subprocess.run(argv, capture_output=True, text=True, env=cli_env(private / "home"), cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: the home {private / 'home'} must be on a filesystem every Ray node sees; not seen on" in r.stderr
    assert r.stderr.count("FileNotFoundError") == 2  # both nodes named


def test_the_head_listens_on_loopback_only(ray_cluster):
    """GCS, raylet, agents of the head: 127.0.0.1 only (see ``clusters.RayCluster.start_node``
    for why the worker node cannot do the same with Ray 2.60)."""
    listening = ray_cluster.listening("node_a")
    assert len(listening) >= 3, listening  # GCS, raylet, object manager, agents ...
    assert ray_cluster.address.rsplit(":", 1)[1] in {a.rsplit(":", 1)[1] for a in listening}  # the GCS port
    for address in listening:
        ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
        assert (getattr(ip, "ipv4_mapped", None) or ip) == ipaddress.ip_address("127.0.0.1"), listening
