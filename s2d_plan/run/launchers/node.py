"""The per-node entry of a cluster stage: ``python -m s2d_plan.run.launchers.node ...``.

A Ray actor or a Slurm ``srun`` task runs this on each node of a stage; it works out
its node rank and the rendezvous address, builds the runner's argv with this node's own
Python (``s2d_plan.run.launch.stage_command``) and replaces itself with it, so signals
reach the runner directly. Kinds that do not train run on node rank 0 only.

Ray passes ``--rank`` and ``--master`` explicitly. Under Slurm (``--slurm``) they come
from the allocation: the rank is ``SLURM_NODEID`` (``SLURM_PROCID`` when one host emulates
several nodes), the master is the first host of ``SLURM_JOB_NODELIST`` (``scontrol show
hostnames``) and the port is derived from the job id.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from s2d_plan.contract import kind_of
from s2d_plan.run.launch import stage_command


def _slurm_rendezvous(emulated: bool) -> tuple[int, str, int]:
    rank = int(os.environ["SLURM_PROCID" if emulated else "SLURM_NODEID"])
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           check=True).stdout.split()
    host = "127.0.0.1" if emulated else hosts[0]
    port = 20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000
    return rank, host, port


def build(argv: list[str] | None = None) -> list[str] | None:
    """The runner argv for this node, or None when this node has nothing to run."""
    ap = argparse.ArgumentParser(prog="s2d_plan.run.launchers.node")
    ap.add_argument("--kind", required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--master", default=None, help="HOST:PORT of node rank 0")
    ap.add_argument("--slurm", choices=("nodes", "emulated"), default=None)
    a = ap.parse_args(argv)
    rank, master = a.rank, None
    if a.slurm and a.nnodes > 1:
        rank, host, port = _slurm_rendezvous(a.slurm == "emulated")
        master = (host, port)
    elif a.master:
        host, _, port = a.master.rpartition(":")
        master = (host, int(port))
    if a.nnodes > 1 and not kind_of(a.kind).trains and rank > 0:
        return None
    return stage_command(a.kind, a.spec, max(a.nproc, 1), nnodes=a.nnodes if kind_of(a.kind).trains else 1,
                         node_rank=rank, master=master)


def main(argv: list[str] | None = None) -> int:
    cmd = build(argv)
    if cmd is None:
        return 0
    sys.stdout.flush()
    from s2d_plan.run.procs import safe_env

    env = safe_env()  # torchrun's workers too import nothing from the cwd
    os.chdir(Path(cmd[-1]).parent)  # the stage's run folder (the spec's), as on one machine
    os.execve(cmd[0], cmd, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
