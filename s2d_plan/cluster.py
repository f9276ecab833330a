"""Where a graph's stages run: the typed cluster a plan names (``compute.cluster``) and a
graph carries. Shared by the plan, the graph and the executor's launchers, so it sits at
the bottom of the planner beside the contract.

    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(ClusterSpec).validate_python({"backend": "slurm", "partition": "gpu"}).gpus_per_node
    8
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayCluster(_Spec):
    """Stages as Ray tasks on a running Ray cluster (``ray start`` on every node)."""

    backend: Literal["ray"]
    address: str = "auto"  # what ``ray.init(address=...)`` takes: auto, HOST:PORT, ray://HOST:PORT
    gpus_per_node: int | None = Field(default=None, gt=0)  # default: the largest node's GPU count
    namespace: str = "s2d"  # Ray namespace of the stage actors (re-attach finds them by name)
    retries: int = Field(default=2, ge=0)  # new attempts of a stage whose node died


class SlurmCluster(_Spec):
    """Stages as Slurm jobs (``sbatch``; one job of N nodes for a multi-node stage)."""

    backend: Literal["slurm"]
    partition: str | None = None  # sbatch --partition (default: the cluster's default)
    account: str | None = None  # sbatch --account
    time_limit: str | None = None  # sbatch --time, e.g. "72:00:00"
    gpus_per_node: int = Field(default=8, ge=0)  # GPUs of one node of the partition
    gres: str = "gpu"  # the GRES name GPUs are requested under (--gres=gpu:N); "" requests none
    max_jobs: int = Field(default=16, gt=0)  # stages queued or running at once
    retries: int = Field(default=2, ge=0)  # new attempts of a stage whose node failed or was preempted


class LocalCluster(_Spec):
    """Stages as local processes (the default)."""

    backend: Literal["local"]


ClusterSpec = Annotated[RayCluster | SlurmCluster | LocalCluster, Field(discriminator="backend")]
