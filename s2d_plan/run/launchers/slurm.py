"""The Slurm launcher: each stage attempt one Slurm job (``sbatch``), ``srun`` per node.

A stage asking ``g`` GPUs on nodes of ``gpus_per_node`` becomes one job of
``ceil(g / gpus_per_node)`` nodes with ``--gres=gpu:<per node>``; the job's fixed batch
script (``slurm_job.sh``) starts ``python -m s2d_plan.run.launchers.node`` once per node
with ``srun``, which reads its node rank and node 0's host from the allocation and execs
the runner under torchrun / accelerate. Everything is an argv list (``sbatch``,
``squeue``, ``scontrol``, ``scancel``); no shell string is built from plan text.

State comes from ``squeue`` while the job is queued or running and from ``scontrol show
job`` after (kept ``MinJobAge`` seconds; no accounting database needed). A job that ended
NODE_FAIL, PREEMPTED, BOOT_FAIL or was cancelled by someone else is a lost node: the
executor retries the stage, which resumes from its checkpoint on the shared filesystem,
with ``--exclude`` naming the nodes that failed it while the partition has enough other
responding nodes (otherwise the attempt's log and the executor say so, and Slurm may
pick the same node again).

A job outlives the executor that submitted it: a restarted executor re-attaches to it
(``attach``, by the job id kept in ``placements``) and waits on it like on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2d_plan.cluster import SlurmCluster
    from s2d_plan.contract import Stage

from s2d_plan.run.launchers import ClusterError, Job, Placement, Slot, split_nodes

SCRIPT = Path(__file__).with_name("slurm_job.sh")
POLL_S = 1.0  # at most one squeue per job per second
PLACE_WAIT_S = 10.0  # how long a start waits to learn the job's nodes
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STOPPED"}
LOST = {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "CANCELLED", "DEADLINE"}


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ClusterError(f"the slurm backend needs Slurm's commands on PATH ({argv[0]} not found)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{argv[0]} did not answer in {timeout:.0f} s: is slurmctld reachable?") from None


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict ({} when Slurm no longer knows the job)."""
    r = _run(["scontrol", "show", "job", "-o", job_id])
    if r.returncode != 0:
        return {}
    info = {}
    for tok in r.stdout.split():
        key, eq, value = tok.partition("=")
        if eq and key not in info:
            info[key] = value
    return info


def exclude_for_retry(avoid: Sequence[str], nodes: Sequence[str], needed: int) -> tuple[list[str], str | None]:
    """The nodes a retry's ``--exclude`` names, and a note when it cannot name them: the
    partition's other responding ``nodes`` are fewer than the ``needed`` nodes.

    >>> exclude_for_retry(["n1"], ["n1", "n2"], 1)
    (['n1'], None)
    >>> exclude_for_retry(["n1"], ["n1"], 1)[1]
    'no node but n1 to retry on (1 node(s) needed, 0 other responding): Slurm may pick n1 again'
    """
    avoid = sorted(set(avoid))
    if not avoid:
        return [], None
    others = [n for n in dict.fromkeys(nodes) if n not in avoid]
    if len(others) >= needed:
        return avoid, None
    return [], (f"no node but {', '.join(avoid)} to retry on ({needed} node(s) needed, {len(others)} other "
                f"responding): Slurm may pick {', '.join(avoid)} again")


def hostnames(nodelist: str) -> list[str]:
    if not nodelist or nodelist in ("(null)", "None"):
        return []
    return _run(["scontrol", "show", "hostnames", nodelist]).stdout.split()


class SlurmHandle:
    pid = None

    def __init__(self, job_id: str, name: str, slot: Slot):
        self.ref, self.name, self.slot = job_id, name, slot
        self.returncode: int | None = None
        self.lost: str | None = None
        self.placements: list[Placement] = []
        self.cancelled_by_us = False
        self.note: str | None = None  # said once when the attempt starts (a retry that could not avoid a node)
        self._next_poll = 0.0

    def locate(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for the job to start, then note its nodes."""
        deadline = time.monotonic() + wait_s
        while True:
            info = job_info(self.ref)
            nodes = hostnames(info.get("NodeList", "")) if info.get("JobState") != "PENDING" else []
            if nodes or time.monotonic() >= deadline or info.get("JobState") not in (None, "PENDING", "CONFIGURING"):
                break
            time.sleep(0.25)
        per = self.slot.gpus_per_node
        self.placements = [Placement(n, per, f"{self.ref}.{rank}") for rank, n in enumerate(nodes)] \
            or [Placement("(queued)", per, self.ref)]

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        now = time.monotonic()
        if now < self._next_poll:
            return None
        self._next_poll = now + POLL_S
        r = _run(["squeue", "-h", "-j", self.ref, "-o", "%T"])
        state = r.stdout.strip()
        if r.returncode == 0 and state in ACTIVE:
            return None
        info = job_info(self.ref)
        state = info.get("JobState", "UNKNOWN")
        if state in ACTIVE:
            return None
        code, _, sig = info.get("ExitCode", "1:0").partition(":")
        if state == "COMPLETED":
            self.returncode = int(code)
        elif state in LOST and not (state == "CANCELLED" and self.cancelled_by_us):
            self.lost = f"node lost (slurm job {self.ref} {state}{' ' + info.get('Reason', '') if info.get('Reason') not in (None, 'None') else ''})"
            self.returncode = -int(signal.SIGKILL)
        else:
            self.returncode = int(code) or (-int(sig) if sig and sig != "0" else 1)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(POLL_S)
        return self.returncode

    def signal(self, sig: int) -> None:
        self.cancelled_by_us = True
        if sig == signal.SIGKILL:
            _run(["scancel", self.ref])
        else:  # to every step and the batch shell: srun passes it on to the runners
            _run(["scancel", "--full", "--signal", signal.Signals(sig).name.removeprefix("SIG"), self.ref])

    def describe(self) -> str:
        nodes = ", ".join(p.node for p in self.placements)
        return f"slurm job {self.ref} on {nodes}"


class SlurmLauncher:
    name = "slurm"

    def __init__(self, cluster: SlurmCluster):
        self.cluster = cluster
        self.retries = cluster.retries

    def check(self, home: Path) -> None:
        """The controller answers, and a job on a compute node sees the home."""
        r = _run(["sinfo", "-h", "-o", "%P %a %D"], timeout=20)
        if r.returncode != 0:
            raise ClusterError(f"cannot reach the Slurm controller: {(r.stderr or r.stdout).strip()[:300]}")
        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        token = home / f".s2d-visible-{os.getpid()}"
        token.write_text("ok")
        try:
            r = _run(["srun", "--immediate=60", "--nodes=1", "--ntasks=1", "--job-name=s2d-home-check",
                      *self._where(), "test", "-f", str(token)], timeout=120)
        finally:
            token.unlink(missing_ok=True)
        if r.returncode != 0:
            raise ClusterError(f"the home {home} must be on a filesystem every Slurm node sees; a job could not "
                               f"find {token.name} in it: {(r.stderr or '').strip()[:300]}")

    def _where(self) -> list[str]:
        c = self.cluster
        return [f for f, v in (("--partition", c.partition), ("--account", c.account),
                               ("--time", c.time_limit)) if v for f in (f"{f}={v}",)]

    def allocate(self, stage: Stage, running: Sequence[Any]) -> Slot | None:
        """Slurm queues and places; we only cap how many of our jobs are out at once."""
        if len(running) >= self.cluster.max_jobs:
            return None
        nodes, per = split_nodes(stage.resources.gpus, self.cluster.gpus_per_node)
        return Slot(nodes=nodes, gpus_per_node=per)

    def sbatch_argv(self, job: Job, slot: Slot, nodes: Sequence[str]) -> tuple[list[str], str | None]:
        """The ``sbatch`` argv of an attempt (``nodes``: the partition's responding nodes,
        read only for a retry), and a note when a retry cannot keep off the lost nodes."""
        argv = ["sbatch", "--parsable", f"--job-name={job.name}", f"--nodes={slot.nodes}", "--ntasks-per-node=1",
                f"--output={job.log_path}", "--open-mode=append", "--no-requeue", *self._where()]
        if slot.gpus_per_node and self.cluster.gres:
            argv.append(f"--gres={self.cluster.gres}:{slot.gpus_per_node}")
        exclude, note = exclude_for_retry(job.avoid, nodes, slot.nodes)
        if exclude:
            argv.append(f"--exclude={','.join(exclude)}")
        node = [sys.executable, "-P", "-m", "s2d_plan.run.launchers.node", "--kind", job.kind, "--spec", str(job.spec_path),
                "--nproc", str(max(slot.gpus_per_node, 1)), "--nnodes", str(slot.nodes), "--slurm", "nodes"]
        return [*argv, str(SCRIPT), *node], note

    def start(self, job: Job, slot: Slot) -> SlurmHandle:
        argv, note = self.sbatch_argv(job, slot, self._nodes() if job.avoid else [])
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        if note:  # the job's output is appended after it
            with open(job.log_path, "a") as log:
                log.write(f"s2d-plan: retry after a lost node: {note}\n")
        r = _run(argv)
        if r.returncode != 0:
            raise ClusterError(f"sbatch refused the stage: {r.stderr.strip()[:300]}")
        handle = SlurmHandle(r.stdout.strip().split(";")[0], job.name, slot)
        handle.note = note
        handle.locate(PLACE_WAIT_S)
        return handle

    def _nodes(self) -> list[str]:
        """The partition's responding nodes (``sinfo -r``), by name."""
        part = [f"--partition={self.cluster.partition}"] if self.cluster.partition else []
        return _run(["sinfo", "-h", "-N", "-r", "-o", "%N", *part]).stdout.split()

    def attach(self, ref: str, slot: Slot) -> SlurmHandle | None:
        """The job a dead executor left, if Slurm still knows it (queued, running, or ended
        within ``MinJobAge``: then its outcome is read as for our own)."""
        if not job_info(ref).get("JobState"):
            return None
        handle = SlurmHandle(ref, ref, slot)
        handle.locate(PLACE_WAIT_S)
        return handle

    def cancel(self, ref: str) -> bool:
        """Cancel a job a dead executor left; True if Slurm still had it queued or running."""
        alive = _run(["squeue", "-h", "-j", ref, "-o", "%T"]).stdout.strip() in ACTIVE
        if alive:
            _run(["scancel", ref])
        return alive

    def close(self) -> None:
        pass
