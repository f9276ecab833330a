"""Launchers: where and how the executor starts a stage attempt.

The executor (``s2d_plan.run.executor``) does everything else the same on every backend:
cache keys, the stage spec file, tailing metrics from the (shared) filesystem into the
one DuckDB writer, statuses, skipping dependants. A launcher only answers four questions:

- ``allocate(stage, running)``: may this stage start now, and on what (a ``Slot``)?
- ``start(job, slot)``: start it; returns a ``Handle`` (``poll``/``wait``/``signal``,
  ``placements``: the nodes it runs on, ``lost``: why, when the *infrastructure* failed
  rather than the runner, which makes the attempt worth retrying elsewhere; ``note``:
  what to say about the start). ``job.avoid`` names the nodes earlier attempts were
  lost on: a launcher that can (Slurm's ``--exclude``) keeps the retry off them.
- ``attach(ref, slot)``: a ``Handle`` on an attempt a dead executor left running (Ray
  actor names and Slurm job ids are kept in the history's ``placements`` table), or
  None when the cluster no longer has it; ``cancel(ref)`` ends one instead (the stage
  is no longer in the graph, or is forced to run again).
- ``check(home)``: fail early, before anything is submitted, when the cluster cannot be
  reached or its workers cannot see the home.

Backends: ``local`` (processes on this machine), ``ray`` and ``slurm``.

    >>> make_launcher(None, gpus=0).name
    'local'
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from s2d_plan.errors import S2DError

if TYPE_CHECKING:
    from s2d_plan.cluster import ClusterSpec, RayCluster, SlurmCluster
    from s2d_plan.contract import Stage

BACKENDS = ("local", "ray", "slurm")
# Environment a runner on another node inherits from the executor: the project's own
# settings and the Python / thread / hub knobs a user set on purpose; nothing host-specific.
ENV_PREFIXES = ("S2D_", "OMP_", "MKL_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "PYTORCH_", "NCCL_", "VLLM_")
ENV_KEYS = ("PYTHONPATH", "PYTHONUNBUFFERED")


class ClusterError(S2DError):
    """The cluster cannot be used (unreachable, home not shared, nothing fits)."""


class Busy(Exception):
    """The cluster cannot place the stage right now after all: it stays PENDING."""


@dataclass(frozen=True)
class Placement:
    node: str  # host name (and Ray node id prefix) the attempt ran on
    gpus: int  # GPUs it held there
    task_id: str  # pid, Ray actor name, or Slurm job id (+ node rank)


@dataclass(frozen=True)
class Slot:
    """What an allocation granted: local GPU ids, or a node count and GPUs per node."""

    gpu_ids: tuple[int, ...] = ()
    nodes: int = 1
    gpus_per_node: int = 0

    @property
    def gpus(self) -> int:
        return len(self.gpu_ids) or self.nodes * self.gpus_per_node


@dataclass
class Job:
    """One stage attempt to start: its kind, spec file, log file, runner environment."""

    name: str  # unique per attempt: s2d-<run>-<stage>-<attempt>
    kind: str
    spec_path: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    gpus_asked: int = 0
    avoid: tuple[str, ...] = ()  # nodes earlier attempts were lost on (a retry keeps off them where it can)


class Handle(Protocol):
    pid: int | None
    ref: str  # what re-attaches to it: pid, actor name prefix, job id
    returncode: int | None
    lost: str | None
    note: str | None  # something to say once the attempt started (a retry that could not avoid a node)
    placements: list[Placement]

    def poll(self) -> int | None: ...
    def wait(self) -> int: ...
    def signal(self, sig: int) -> None: ...
    def describe(self) -> str: ...


class Launcher(Protocol):
    """What the executor drives: local processes, Ray actors or Slurm jobs."""

    name: str  # the backend: local, ray, slurm
    retries: int  # how often a stage lost to the cluster (not failed by its runner) is restarted

    def check(self, home: Path) -> None: ...
    def allocate(self, stage: Stage, running: Sequence[Any]) -> Slot | None: ...
    def start(self, job: Job, slot: Slot) -> Any: ...  # a Handle (the handles' attributes are not yet declared to match it)
    def attach(self, ref: str, slot: Slot) -> Any: ...
    def cancel(self, ref: str) -> bool: ...
    def close(self) -> None: ...


def split_nodes(gpus: int, per_node: int) -> tuple[int, int]:
    """(nodes, GPUs per node) for a stage asking ``gpus`` on nodes of ``per_node`` GPUs.

    >>> split_nodes(16, 8), split_nodes(3, 2), split_nodes(1, 8), split_nodes(0, 8)
    ((2, 8), (2, 2), (1, 1), (1, 0))
    """
    if gpus <= per_node or per_node <= 0:
        return 1, gpus
    nodes = math.ceil(gpus / per_node)
    return nodes, math.ceil(gpus / nodes)


def remote_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The executor's environment a remote runner should see (see ENV_PREFIXES)."""
    env = {k: v for k, v in os.environ.items() if k in ENV_KEYS or k.startswith(ENV_PREFIXES)}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(extra or {})
    return env


def make_launcher(cluster: ClusterSpec | None, *, gpus: int = 0, max_parallel: int = 4) -> Launcher:
    """The launcher for a graph's ``cluster`` (a ``ClusterSpec`` or None for local)."""
    backend = getattr(cluster, "backend", "local")
    if backend == "local":
        from s2d_plan.run.launchers.local import LocalLauncher
        return LocalLauncher(gpus, max_parallel)
    if backend == "ray":
        from s2d_plan.run.launchers.ray import RayLauncher
        return RayLauncher(cast("RayCluster", cluster))
    if backend == "slurm":
        from s2d_plan.run.launchers.slurm import SlurmLauncher
        return SlurmLauncher(cast("SlurmCluster", cluster))
    raise ClusterError(f"unknown backend {backend!r} (backends: {', '.join(BACKENDS)})")


def cluster_for(backend: str | None, cluster: ClusterSpec | None) -> ClusterSpec | None:
    """``execute --backend`` over the graph's own cluster: the graph's settings when they
    are for that backend, else that backend's defaults.

    >>> cluster_for("ray", None).address
    'auto'
    >>> cluster_for(None, None) is None
    True
    """
    if backend is None or backend == getattr(cluster, "backend", "local"):
        return cluster
    if backend not in BACKENDS:
        raise ClusterError(f"unknown backend {backend!r} (backends: {', '.join(BACKENDS)})")
    from pydantic import TypeAdapter

    from s2d_plan.cluster import ClusterSpec
    return TypeAdapter(ClusterSpec).validate_python({"backend": backend})
