"""The local launcher: each stage attempt a process group on this machine.

A stage takes ``resources.gpus`` of the GPUs this machine has (``CUDA_VISIBLE_DEVICES``
is set for it); on a machine without GPUs, stages that ask for GPUs run one at a time,
and stages with ``gpus: 0`` run beside them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2d_plan.contract import Stage

from s2d_plan.run import procs as _procs
from s2d_plan.run.launch import stage_command
from s2d_plan.run.launchers import Job, Placement, Slot


class LocalHandle:
    """A runner's process group: ``subprocess.Popen`` plus what the executor asks of a handle."""

    lost = None  # a local process has no node to lose
    note = None

    def __init__(self, proc: subprocess.Popen, argv: list[str], gpus: int):
        self.proc, self.argv = proc, argv
        self.pid = proc.pid
        self.ref = str(proc.pid)
        self.placements = [Placement(os.uname().nodename, gpus, str(proc.pid))]

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        return self.proc.wait()

    def signal(self, sig: int) -> None:
        _procs.signal_group(self.proc.pid, sig)

    def describe(self) -> str:
        return f"pid {self.pid}): {shlex.join(self.argv)}"


class LocalLauncher:
    name = "local"
    retries = 0  # a failure here is the runner's own: retrying would fail the same way

    def __init__(self, gpus: int, max_parallel: int = 4):
        self.gpus, self.max_parallel = gpus, max_parallel

    def check(self, home: Path) -> None:
        pass

    def allocate(self, stage: Stage, running: Sequence[Any]) -> Slot | None:
        """GPU ids for the stage (none when it needs none), or None when it must wait."""
        if len(running) >= self.max_parallel:
            return None
        want = stage.resources.gpus
        if want == 0:
            return Slot()
        if self.gpus == 0:  # no GPUs here: GPU stages run one at a time, on the CPU
            busy = any(r.stage.resources.gpus > 0 for r in running)
            return None if busy else Slot(gpus_per_node=want)
        used = {i for r in running for i in r.slot.gpu_ids}
        free = [i for i in range(self.gpus) if i not in used]
        want = min(want, self.gpus)
        if len(free) < want:
            return None
        return Slot(gpu_ids=tuple(free[:want]))

    def start(self, job: Job, slot: Slot) -> LocalHandle:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # OpenMP threads that spin while they wait made CPU GRPO steps ~40x slower when
        # cores are shared (measured in the tinyworld benchmark); a user's setting wins.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.update(job.env)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in slot.gpu_ids)
        # without GPUs a multi-GPU stage still gets its process count (CPU/gloo under torchrun)
        nproc = len(slot.gpu_ids) if self.gpus else max(job.gpus_asked, 1)
        argv = stage_command(job.kind, job.spec_path, nproc)
        return LocalHandle(_procs.start(argv, job.log_path, env), argv, len(slot.gpu_ids))

    def attach(self, ref: str, slot: Slot) -> None:
        return None  # nothing to re-attach to: a local runner dies with its executor

    def cancel(self, ref: str) -> bool:
        return False  # a local runner dies with its executor (PR_SET_PDEATHSIG); recovery kills survivors

    def close(self) -> None:
        pass
