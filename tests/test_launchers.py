"""Launchers without a cluster: the plan's compute.cluster, --backend, the local
launcher's placements, and the clear errors before anything is submitted."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, sim_stage

from s2d_plan.errors import PlanError
from s2d_plan.plan.spec import load_plan
from s2d_plan.run.launchers import Slot, node

TINY = (REPO / "plans/tiny-cpu.yaml").read_text()
COMPUTE = "compute: {gpu: cpu, gpus: 1, hours: 0.05}"


def plan_with(tmp_path: Path, cluster: str) -> Path:
    assert COMPUTE in TINY
    path = tmp_path / "plan.yaml"
    path.write_text(TINY.replace(COMPUTE, COMPUTE[:-1] + f", cluster: {cluster}}}"))
    return path


def test_cluster_is_typed_and_does_not_change_the_plan_hash(tmp_path):
    ray = load_plan(plan_with(tmp_path, "{backend: ray, address: 'head:6379', retries: 3}"))
    assert (ray.compute.cluster.backend, ray.compute.cluster.address, ray.compute.cluster.retries) == \
        ("ray", "head:6379", 3)
    slurm = load_plan(plan_with(tmp_path, "{backend: slurm, partition: gpu, account: lab, time_limit: '72:00:00'}"))
    assert (slurm.compute.cluster.partition, slurm.compute.cluster.time_limit) == ("gpu", "72:00:00")
    assert ray.hash() == slurm.hash() == load_plan(REPO / "plans/tiny-cpu.yaml").hash()


@pytest.mark.parametrize("cluster, message", [
    ("{backend: ray, adress: auto}", "compute.cluster.ray.adress"),
    ("{backend: slurm, partition: gpu, nodes: 2}", "compute.cluster.slurm.nodes"),
    ("{backend: kubernetes}", "compute.cluster"),
    ("{backend: ray, retries: -1}", "compute.cluster.ray.retries"),
])
def test_bad_cluster_is_a_plan_error_naming_the_field(tmp_path, cluster, message):
    with pytest.raises(PlanError) as err:
        load_plan(plan_with(tmp_path, cluster))
    assert message in str(err.value)


def test_local_runs_record_placements(write_graph, cli):
    r = cli("execute", str(write_graph([sim_stage("a", steps=2), sim_stage("b", needs=("a",), steps=2)])))
    assert r.returncode == 0, r.stderr
    rows = json.loads(cli("history", "--json", "SELECT p.stage_id, p.backend, p.node, p.task_id, p.status, s.pid "
                                               "FROM placements p JOIN stages s USING (run_id, stage_id) "
                                               "ORDER BY 1").stdout)
    assert [(x["stage_id"], x["backend"], x["node"], x["status"]) for x in rows] == \
        [("a", "local", os.uname().nodename, "FINISHED"), ("b", "local", os.uname().nodename, "FINISHED")]
    assert all(x["task_id"] == str(x["pid"]) for x in rows)


def test_unknown_backend_is_refused(write_graph, cli, s2d_home):
    r = cli("execute", str(write_graph([sim_stage("a", steps=1)])), "--backend", "kubernetes")
    assert r.returncode == 2 and "unknown backend 'kubernetes'" in r.stderr
    assert not s2d_home.exists()


def test_slurm_backend_without_a_controller_is_refused(write_graph, cli, s2d_home, tmp_path, monkeypatch):
    if not shutil.which("sinfo"):
        r = cli("execute", str(write_graph([sim_stage("a", steps=1)])), "--backend", "slurm")
        assert r.returncode == 2 and "needs Slurm's commands on PATH" in r.stderr
        return
    conf = tmp_path / "slurm.conf"  # a controller on a port nobody listens on
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\n"
                    "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1 Default=YES\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    r = cli("execute", str(write_graph([sim_stage("a", steps=1)])), "--backend", "slurm", timeout=120)
    assert r.returncode == 2 and "cannot reach the Slurm controller" in r.stderr, r.stderr
    assert not (s2d_home / "history.duckdb").exists()


def test_node_entry_rendezvous():
    """Each node of a training stage runs its share under torchrun with the node rank and
    node 0's address; a sampling stage runs on node 0 only."""
    argv = node.build(["--kind", "opd", "--spec", "/s.json", "--nproc", "1", "--nnodes", "2", "--rank", "1",
                       "--master", "10.1.2.3:29400"])
    assert argv[0] == sys.executable and argv[1:4] == ["-P", "-m", "torch.distributed.run"]  # -P: safe path
    i = argv.index("--nnodes")
    assert argv[i:i + 8] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.1.2.3", "--master_port", "29400"]
    assert node.build(["--kind", "eval", "--spec", "/s.json", "--nnodes", "2", "--rank", "1"]) is None
    assert node.build(["--kind", "eval", "--spec", "/s.json", "--nnodes", "2", "--rank", "0"])[1:] == \
        ["-P", "-m", "runners.eval", "/s.json"]
    assert Slot(nodes=2, gpus_per_node=8).gpus == 16 and Slot(gpu_ids=(0, 1)).gpus == 2


def test_slurm_retry_excludes_the_lost_nodes_only_while_others_remain(tmp_path):
    """The sbatch argv of a retry (no controller needed): ``--exclude`` names the nodes the
    lost attempts ran on when the partition has enough other responding nodes; otherwise
    no exclusion (the job would never start) and a note the attempt's log and the
    executor print."""
    from s2d_plan.cluster import SlurmCluster
    from s2d_plan.run.launchers import Job
    from s2d_plan.run.launchers.slurm import SlurmLauncher
    launcher = SlurmLauncher(SlurmCluster(backend="slurm", partition="gpu", gpus_per_node=1))

    def argv(avoid, nodes, slot):
        job = Job("s2d-r-a-2", "simulate", tmp_path / "a.2.spec.json", tmp_path / "a.2.log", avoid=avoid)
        return launcher.sbatch_argv(job, slot, nodes)

    first, note = argv((), ["n1", "n2"], Slot(nodes=1, gpus_per_node=1))
    assert note is None and not [a for a in first if a.startswith("--exclude")]
    assert first[:first.index(str(tmp_path / "a.2.log").join(["--output=", ""]))] == \
        ["sbatch", "--parsable", "--job-name=s2d-r-a-2", "--nodes=1", "--ntasks-per-node=1"]
    retry, note = argv(("n1",), ["n1", "n2", "n3"], Slot(nodes=1, gpus_per_node=1))
    assert "--exclude=n1" in retry and note is None
    # a two-node stage lost on n1 and n2 of a three-node partition: no two others to go to
    both, note = argv(("n1", "n2"), ["n1", "n2", "n3"], Slot(nodes=2, gpus_per_node=1))
    assert not [a for a in both if a.startswith("--exclude")]
    assert note == "no node but n1, n2 to retry on (2 node(s) needed, 1 other responding): Slurm may pick n1, n2 again"
    # a one-node cluster
    alone, note = argv(("n1",), ["n1"], Slot(nodes=1, gpus_per_node=1))
    assert not [a for a in alone if a.startswith("--exclude")] and note.startswith("no node but n1 to retry on")
    assert all(isinstance(a, str) for a in retry + both + alone)  # an argv list, never a shell string
